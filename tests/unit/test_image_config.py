"""The [image] config section."""

from __future__ import annotations

import pytest

from cri.config import Config, ConfigError, dump_toml, parse_config, redact


def test_defaults_and_round_trip() -> None:
    config = Config()
    assert config.image.registry_config_path == "/etc/crisp/certs.d"
    assert config.image.max_concurrent_downloads >= 1
    text = '[image]\nmax_concurrent_downloads = 5\n[image.auths."r.example:5000"]\nusername = "u"\npassword = "p"\n'
    parsed = parse_config(text)
    assert parsed.image.max_concurrent_downloads == 5
    assert parsed.image.auths["r.example:5000"].password == "p"
    assert parse_config(dump_toml(parsed)) == parsed


@pytest.mark.parametrize(("text", "key"), [
    ('[image]\nregistry_config_path = "relative"\n', "image.registry_config_path"),
    ("[image]\nmax_concurrent_downloads = 0\n", "image.max_concurrent_downloads"),
    ("[image]\npull_progress_timeout_seconds = 0\n", "image.pull_progress_timeout_seconds"),
    ('[image.auths.x]\ntoken = "t"\n', "image.auths.x.token"),
])
def test_bad_values(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text)


def test_redacted_hides_secrets() -> None:
    parsed = parse_config('[image.auths.r]\nusername = "u"\npassword = "p4ss"\nauth = "YTpi"\n')
    auth = redact(parsed).image.auths["r"]
    assert (auth.username, auth.password, auth.auth, auth.identity_token) == ("u", "<redacted>", "<redacted>", "")
    assert parsed.image.auths["r"].password != "<redacted>"  # the config in use keeps them
