"""docs/configuration.md and deploy/crisp.toml are what the config dataclasses render: every key, its type, default
and meaning; the example file holds only defaults, and its commented-out examples are valid config."""

from __future__ import annotations

import dataclasses

from cri.config import Config, HandlerConfig, RegistryAuthConfig, parse_config
from cri.config_doc import EXAMPLE, REFERENCE, render_example, render_reference, tables

REGENERATE = "run `python -m cri.config_doc` (the config dataclasses changed)"


def test_the_reference_is_generated_from_the_dataclasses() -> None:
    assert REFERENCE.read_text() == render_reference(), REGENERATE


def test_the_example_file_is_generated_from_the_dataclasses() -> None:
    assert EXAMPLE.read_text() == render_example(), REGENERATE


def test_every_key_has_a_meaning_and_every_table_a_description() -> None:
    found = tables()
    assert [t.name for t in found if not t.doc] == []
    assert [f"{t.name}.{k.name}" for t in found for k in t.keys if not k.meaning] == []
    # every field of every section is there (tables walk the dataclasses; this pins that none is skipped)
    keys = {f"{t.name}.{k.name}".lstrip(".") for t in found for k in t.keys}
    for f in dataclasses.fields(Config):
        value = getattr(Config(), f.name)
        if dataclasses.is_dataclass(value):
            assert {f"{f.name}.{g.name}" for g in dataclasses.fields(value)
                    if not isinstance(getattr(value, g.name), dict) or g.name == "delay_points"} <= keys
        else:
            assert f.name in keys
    reference = REFERENCE.read_text()
    assert "`netns_dir`" in reference and '`"/run/netns"`' in reference


def test_the_example_file_is_all_defaults_and_its_examples_parse() -> None:
    text = EXAMPLE.read_text()
    assert parse_config(text, str(EXAMPLE)) == Config()
    uncommented = "\n".join(line[2:] if line.startswith("# [") or (line.startswith("# ") and " = " in line)
                            else line for line in text.splitlines())
    config = parse_config(uncommented, "uncommented")
    assert config.runtime.handlers == {"runc": HandlerConfig(type="oci", path="runc"),
                                       "crun": HandlerConfig(type="oci", path="crun")}
    assert config.image.auths == {"registry.example.com": RegistryAuthConfig(username="robot", password="secret")}
