from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cri.config import HandlerConfig
from runtime import errors
from runtime.executor import handlers


def test_default_handler_is_builtin() -> None:
    handler = handlers.resolve_handler("", {}, Path("/run/crisp"))
    assert handler.kind == "builtin"
    assert handler.root == Path("/run/crisp/runtimes/builtin")
    assert handler.command("state", "x")[-4:] == ["--root", "/run/crisp/runtimes/builtin", "state", "x"]
    assert Path(handler.argv[0]).name in ("crisp-executor", Path(sys.executable).name)


def test_unknown_handler_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgument, match="unknown runtime handler 'kata'"):
        handlers.resolve_handler("kata", {"runc": HandlerConfig(path="runc")}, Path("/run/crisp"))


def test_oci_handler_root_and_binary(tmp_path: Path) -> None:
    binary = tmp_path / "myrunc"
    binary.write_text("#!/bin/sh\necho 'runc version 1.2.3'\n")
    binary.chmod(0o755)
    config = {"mine": HandlerConfig(path=str(binary)), "rooted": HandlerConfig(path=str(binary), root="/x/y")}
    handler = handlers.resolve_handler("mine", config, Path("/run/crisp"))
    assert handler.kind == "oci" and handler.argv == (str(binary),)
    assert handler.root == Path("/run/crisp/runtimes/mine")
    assert handlers.resolve_handler("rooted", config, Path("/s")).root == Path("/x/y")
    assert handlers.oci_runtime_version(str(binary)) == ("runc", (1, 2, 3))


def test_missing_binary_is_failed_precondition() -> None:
    with pytest.raises(errors.FailedPrecondition, match="not installed"):
        handlers.resolve_handler("x", {"x": HandlerConfig(path="crisp-no-such-runtime")}, Path("/run"))


@pytest.mark.parametrize("text, parsed", [
    ("runc version 1.1.5+ds1\ncommit: x\nspec: 1.0.2-dev\n", ("runc", (1, 1, 5))),
    ("crun version 1.8.1\ncommit: f8a0\n", ("crun", (1, 8, 1))),
    ("garbage", None),
])
def test_parse_version(text: str, parsed: tuple[str, tuple[int, ...]] | None) -> None:
    assert handlers.parse_version(text) == parsed


def test_old_runc_has_no_rro(tmp_path: Path) -> None:
    binary = tmp_path / "oldrunc"
    binary.write_text("#!/bin/sh\necho 'runc version 1.0.3'\n")
    binary.chmod(0o755)
    handler = handlers.resolve_handler("old", {"old": HandlerConfig(path=str(binary))}, Path("/run"))
    assert handlers.handler_features(handler).recursive_read_only_mounts is False
