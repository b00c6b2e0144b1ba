"""Config parsing: defaults, every key checked, errors that name the key, TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    HandlerConfig,
    dump_toml,
    load_config,
    parse_config,
    parse_host_port,
    with_overrides,
)


def test_empty_file_is_all_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.root == "/var/lib/crisp"
    assert config.state == "/run/crisp"
    assert config.listen == "/run/crisp/crisp.sock"
    assert config.cgroup.driver == "cgroupfs"
    assert config.cgroup.base == "/crisp"
    assert config.metrics.address == "127.0.0.1:9647"


def test_values_are_read() -> None:
    config = parse_config(
        """
        root = "/srv/crisp"
        log_level = "debug"
        shutdown_grace_seconds = 3
        [cgroup]
        driver = "systemd"
        missing_controller = "warn"
        base = "/kubepods/crisp"
        [runtime.handlers.runc]
        path = "/usr/sbin/runc"
        [network]
        pod_cidr = "10.244.0.0/24"
        """
    )
    assert config.root == "/srv/crisp"
    assert config.log_level == "debug"
    assert config.shutdown_grace_seconds == 3.0
    assert config.cgroup.driver == "systemd"
    assert config.cgroup.missing_controller == "warn"
    assert config.cgroup.base == "/kubepods/crisp"
    assert config.runtime.handlers == {"runc": HandlerConfig(type="oci", path="/usr/sbin/runc", root="")}
    assert config.network.pod_cidr == "10.244.0.0/24"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1", "'bogus'"),
        ("[cgroup]\nflavour = 'x'", "'cgroup.flavour'"),
        ("[nosuchsection]\na = 1", "'nosuchsection'"),
        ("[runtime.handlers.runc]\npath = 'runc'\nextra = 1", "'runtime.handlers.runc.extra'"),
    ],
)
def test_unknown_keys_are_named(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key {key}"):
        parse_config(text, "crisp.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cgroup]\ndriver = 'cgroupv3'", "cgroup.driver: 'cgroupv3' is not one of 'cgroupfs', 'systemd'"),
        ("log_level = 5", "log_level: expected a string, got int 5"),
        ("root = 'relative/dir'", "root: must be an absolute path"),
        ("[streaming]\nport = 'eighty'", "streaming.port: expected an integer"),
        ("[streaming]\nport = true", "streaming.port: expected an integer"),
        ("[cgroup]\ndriver = ['cgroupfs']", "cgroup.driver: expected a string"),
        ("cgroup = 1", "cgroup: expected a table"),
        ("[cgroup]\nbase = 'crisp'", "cgroup.base: must be an absolute path"),
        ("[cgroup]\nbase = '/a/../b'", "cgroup.base: bad cgroup path"),
        ("[cgroup]\nbase = '/'", "cgroup.base: must not be the root cgroup"),
        ("[network]\npod_cidr = '10.0.0.0/33'", "network.pod_cidr: "),
        ("[network]\npod_cidr = '10.0.0.0/16,10.1.0.0/16'", "network.pod_cidr: "),
        ("[network]\nbridge = 'docker0'", "network.bridge: bridge name 'docker0': must start with 'crisp'"),
        ("[network]\nmtu = 100", "network.mtu: 100 is out of range"),
        ("[network]\ncni_config_dir = 'net.d'", "network.cni_config_dir: must be an absolute path"),
        ("[network]\ncni_bin_dirs = ['bin']", "network.cni_bin_dirs: must be absolute paths"),
        ("[network]\ncni_bin_dirs = '/opt/cni/bin'", "network.cni_bin_dirs: expected an array"),
        ("[network]\ntimeout_seconds = 0", "network.timeout_seconds: must be positive"),
        ("[streaming]\naddress = 'localhost'", "streaming.address: 'localhost' is not an IP address"),
        ("[streaming]\naddress = '0.0.0.0'", "streaming.address: 0.0.0.0 names no host a client could reach"),
        ("[streaming]\nport = 70000", "streaming.port: 70000 is not a TCP port"),
        ("[streaming]\nidle_timeout_seconds = 0", "streaming.idle_timeout_seconds: must be positive"),
        ("[streaming]\nmax_tokens = 0", "streaming.max_tokens: must be at least 1"),
        ("[runtime.handlers.runc]\ntype = 'oci'", "runtime.handlers.runc.path: an oci handler needs"),
        ("[runtime.handlers.x]\ntype = 'wasm'", "runtime.handlers.x.type: 'wasm' is not one of"),
        ("shutdown_grace_seconds = -1", "shutdown_grace_seconds: must not be negative"),
        ("[metrics]\naddress = '9647'", "metrics.address: expected host:port"),
        ("[metrics]\naddress = ':9647'", "metrics.address: expected host:port"),
        ("[metrics]\naddress = 'localhost:http'", "metrics.address: the port of 'localhost:http' is not a number"),
        ("[metrics]\naddress = '127.0.0.1:70000'", "metrics.address: the port of '127.0.0.1:70000' is out of range"),
        ("[metrics]\naddress = '::1:9647'", "metrics.address: an IPv6 address needs brackets"),
        ("[stats]\ndisk_usage_cache_seconds = -1", "stats.disk_usage_cache_seconds: must not be negative"),
        ("[stats]\nnetwork_timeout_seconds = 0", "stats.network_timeout_seconds: must be positive"),
        ("[events]\nsubscriber_buffer = 0", "events.subscriber_buffer: must be at least 1"),
        ("root = ", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "crisp.toml")
    assert str(info.value).startswith("crisp.toml: ")
    assert message in str(info.value)


def test_dump_round_trips() -> None:
    config = parse_config(
        """
        listen = "/tmp/x y/crisp.sock"
        [runtime.handlers.runc]
        path = "runc"
        [runtime.handlers."kata-qemu"]
        path = "/opt/kata \\"q\\"/bin/runtime"
        [network]
        pod_cidr = "10.1.0.0/16,fd00:1::/64"
        cni_bin_dirs = ["/a b", "/c"]
        [debug]
        slow_callback_ms = 50
        """
    )
    assert config.network.cni_bin_dirs == ["/a b", "/c"]
    text = dump_toml(config)
    assert parse_config(text) == config
    assert parse_config(dump_toml(Config())) == Config()


def test_overrides_replace_and_are_checked() -> None:
    config = with_overrides(Config(), root="/a", state="/b", listen="/c/s.sock", log_level=None)
    assert (config.root, config.state, config.listen, config.log_level) == ("/a", "/b", "/c/s.sock", "info")
    with pytest.raises(ConfigError, match="root: must be an absolute path"):
        with_overrides(Config(), root="rel")


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(str(tmp_path / "nope.toml"))


def test_missing_default_file_means_defaults() -> None:
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    assert load_config(None) == Config()


def test_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "crisp.toml"
    path.write_text("[cgroup]\ndriver = 'systemd'\n")
    assert load_config(str(path)).cgroup.driver == "systemd"


def test_tables_of_plain_values_round_trip() -> None:
    config = parse_config('[debug.delay_points]\n"run_pod_sandbox.record" = 1500\n"crispd.ready" = 2\n')
    assert config.debug.delay_points == {"run_pod_sandbox.record": 1500, "crispd.ready": 2}
    assert parse_config(dump_toml(config)) == config
    with pytest.raises(ConfigError, match=r"debug\.delay_points\.x: expected an integer"):
        parse_config('[debug.delay_points]\nx = "slow"\n')


def test_debug_points_must_be_fail_points() -> None:
    config = parse_config('[debug]\nhang_points = ["create_container.shim"]\nfail_points = ["pull_image.record"]\n')
    assert config.debug.hang_points == ["create_container.shim"]
    for key in ("hang_points", "fail_points"):
        with pytest.raises(ConfigError, match=rf"debug\.{key}: 'create_container.shmi' is not a fail point"):
            parse_config(f'[debug]\n{key} = ["create_container.shmi"]\n')
    with pytest.raises(ConfigError, match=r"debug\.delay_points: 'nowhere' is not a fail point"):
        parse_config('[debug.delay_points]\nnowhere = 5\n')
    assert parse_config('[debug]\nhang_points = ["shim.created"]\n').debug.hang_points == ["shim.created"]
    with pytest.raises(ConfigError, match=r"debug\.fail_points: 'shim.created' is a shim's point"):
        parse_config('[debug]\nfail_points = ["shim.created"]\n')


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:9647", ("127.0.0.1", 9647)), ("[::1]:0", ("::1", 0)), ("localhost:8080", ("localhost", 8080)),
    ("0.0.0.0:9647", ("0.0.0.0", 9647)),
])
def test_metrics_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(address) == expected
    assert parse_config(f"[metrics]\naddress = '{address}'").metrics.address == address


def test_metrics_can_be_turned_off() -> None:
    assert parse_config("[metrics]\naddress = ''").metrics.address == ""
