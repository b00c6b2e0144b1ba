"""hosts.toml: mirrors in order, then the upstream; defaults without a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import errors
from runtime.image.hosts import registry_hosts


def _write(certs: Path, host: str, text: str) -> None:
    (certs / host).mkdir(parents=True, exist_ok=True)
    (certs / host / "hosts.toml").write_text(text)


def test_defaults_without_config(tmp_path: Path) -> None:
    assert [h.base_url for h in registry_hosts(str(tmp_path), "docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [h.base_url for h in registry_hosts(str(tmp_path), "quay.io")] == ["https://quay.io/v2"]
    # loopback registries are tried over plain HTTP after HTTPS, as containerd does
    assert [h.base_url for h in registry_hosts("", "127.0.0.1:5000")] == [
        "https://127.0.0.1:5000/v2", "http://127.0.0.1:5000/v2"]
    assert [h.base_url for h in registry_hosts("", "localhost:5000")][1] == "http://localhost:5000/v2"


def test_mirrors_in_order_then_server(tmp_path: Path) -> None:
    _write(tmp_path, "docker.io", '''
server = "https://registry-1.docker.io"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."http://127.0.0.1:5000".header]
    x-test = ["a", "b"]
[host."https://mirror.example.com/base"]
  capabilities = ["pull"]
  ca = "ca.pem"
  client = [["c.pem", "k.pem"]]
[host."https://push-only.example.com"]
  capabilities = ["push"]
[host."https://exact.example.com/custom/path"]
  override_path = true
''')
    hosts = registry_hosts(str(tmp_path), "docker.io")
    assert [h.base_url for h in hosts] == [
        "http://127.0.0.1:5000/v2", "https://mirror.example.com/base/v2",
        "https://exact.example.com/custom/path", "https://registry-1.docker.io/v2"]
    first, second, _, upstream = hosts
    assert first.mirror and first.skip_verify and first.headers == (("x-test", "a"), ("x-test", "b"))
    assert second.capabilities == {"pull"}
    assert second.ca_files == (str(tmp_path / "docker.io" / "ca.pem"),)
    assert second.client_certs == ((str(tmp_path / "docker.io" / "c.pem"), str(tmp_path / "docker.io" / "k.pem")),)
    assert not upstream.mirror and upstream.capabilities == {"pull", "resolve", "push"}
    assert all(h.registry == "docker.io" for h in hosts)


def test_no_server_means_the_registry_itself(tmp_path: Path) -> None:
    _write(tmp_path, "example.com", '[host."http://10.0.0.1:5000"]\n')
    assert [h.base_url for h in registry_hosts(str(tmp_path), "example.com")] == [
        "http://10.0.0.1:5000/v2", "https://example.com/v2"]


def test_each_endpoint_once(tmp_path: Path) -> None:
    """A loopback registry mirrored to itself (the mirror is also the upstream's plain-HTTP fallback): asked once,
    with the mirror's settings."""
    _write(tmp_path, "127.0.0.1:5000", '[host."http://127.0.0.1:5000"]\n  skip_verify = true\n'
                                       '[host."http://127.0.0.1:5000/v2"]\n')
    hosts = registry_hosts(str(tmp_path), "127.0.0.1:5000")
    assert [h.base_url for h in hosts] == ["http://127.0.0.1:5000/v2", "https://127.0.0.1:5000/v2"]
    assert hosts[0].mirror and hosts[0].skip_verify


def test_default_dir(tmp_path: Path) -> None:
    _write(tmp_path, "_default", 'server = "http://127.0.0.1:9"\n')
    assert [h.base_url for h in registry_hosts(str(tmp_path), "any.example")] == ["http://127.0.0.1:9/v2"]


@pytest.mark.parametrize("text", [
    "server = [",  # not TOML
    'server = 1',
    '[host."ftp://x"]\n',
    '[host."http://x"]\ncapabilities = ["fly"]\n',
    '[host."http://x"]\nskip_verify = "yes"\n',
    '[host."http://x"]\nunknown = 1\n',
    'server = "https://x"\ncapabilities = ["push"]\n',  # nothing may pull
])
def test_bad_files(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "example.com", text)
    with pytest.raises(errors.InvalidArgument) as info:
        registry_hosts(str(tmp_path), "example.com")
    assert "hosts.toml" in str(info.value)
