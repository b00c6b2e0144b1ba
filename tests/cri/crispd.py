"""Start a real crispd on a temporary root, state dir and socket, and talk to it with a real gRPC client."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cri import api as cri

# asyncio debug mode logs every callback slower than the threshold like this
SLOW_CALLBACK = re.compile(r"asyncio: Executing .* took \d+\.\d+ seconds")
SLOW_CALLBACK_MS = 50
METRICS_LINE = re.compile(r"metrics on (http://\S+?)/metrics")


def crispd_command() -> list[str]:
    """The installed `crispd` console script next to this interpreter (as the README's install makes it)."""
    script = Path(sys.executable).parent / "crispd"
    if script.exists():
        return [str(script)]
    found = shutil.which("crispd")
    if found is None:
        raise RuntimeError("crispd is not installed: run `make test` (or pip install -e .)")
    return [found]


def debug_table(keys: str = "") -> str:
    """A test crispd's [debug] table: its slow-callback check, and `keys` (fail, hang or delay points, ...)."""
    return f"[debug]\nslow_callback_ms = {SLOW_CALLBACK_MS}\n{keys}"


class Crispd:
    """One crispd process; `start()` waits until it answers over its socket."""

    def __init__(self, base: Path, config: str = "", name: str = "crispd", metrics: str = "127.0.0.1:0",
                 env: dict[str, str] | None = None, debug: bool = True, debug_config: str = "") -> None:
        """`metrics` is the Prometheus endpoint's address: port 0 (the default) lets the kernel pick a free one
        (`metrics_url` finds it); "" turns it off. `env`: added to crispd's environment. `debug` (tests): log
        level debug and asyncio's debug mode with the slow-callback check; off (benchmarks), crispd runs as
        deployed: debug mode costs every callback of the loop, a few ms per RPC. `debug_config`: more of the
        [debug] table (`debug_table`), e.g. fail points."""
        self.base = base
        self.env = env or {}
        self.debug = debug
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "run" / "crisp.sock"
        self.config_path = base / f"{name}.toml"
        self.log_path = base / f"{name}.log"
        checks = debug_table(debug_config) if debug else (f"[debug]\n{debug_config}" if debug_config else "")
        self.config_path.write_text(f'[metrics]\naddress = "{metrics}"\n{checks}{config}')
        self.proc: subprocess.Popen[bytes] | None = None
        # the crispd program (default: the one installed next to this interpreter); a benchmark may set another
        # checkout's to compare the two
        self.program: list[str] | None = None
        self._channel: grpc.Channel | None = None
        # a command prefix that starts crispd (and the tools that look at its host: ip, nft) elsewhere, e.g. nsenter
        # into the namespaces of the cluster tier's node
        self.prefix: list[str] = []

    def command(self, *extra: str) -> list[str]:
        return [
            *self.prefix, *(self.program or crispd_command()), "--config", str(self.config_path),
            "--root", str(self.root), "--state", str(self.state), "--listen", str(self.socket),
            "--log-level", "debug" if self.debug else "info", *extra,
        ]

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(*extra), stdout=log, stderr=log, close_fds=True,
                                         start_new_session=True, env={**os.environ, **self.env})
        return self.proc

    def start(self, timeout: float = 30.0) -> Crispd:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crispd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(cri.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"crispd did not answer within {timeout}s:\n{self.log()}")

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self._channel

    @property
    def runtime(self) -> cri.RuntimeServiceStub:
        return cri.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> cri.ImageServiceStub:
        return cri.ImageServiceStub(self.channel)

    def crictl_command(self, *args: str) -> list[str]:
        """The real crictl (from the tools cache) with a config naming this crispd's socket."""
        from tests import tools

        config = self.base / "crictl.yaml"
        url = f"unix://{self.socket}"
        config.write_text(f"runtime-endpoint: {url}\nimage-endpoint: {url}\ntimeout: 30\n")
        return [str(tools.tool("crictl")), "--config", str(config), *args]

    def crictl(self, *args: str, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.crictl_command(*args), input=stdin, capture_output=True, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_url(self, path: str = "/metrics") -> str:
        """The URL of crispd's metrics endpoint, from the line it logs when it listens (the latest start)."""
        found = METRICS_LINE.findall(self.log())
        if not found:
            raise RuntimeError(f"crispd logged no metrics address:\n{self.log()}")
        return found[-1] + path

    def usage(self) -> tuple[float, int, int]:
        """crispd's CPU time so far (seconds), resident and peak resident memory (KiB): the scale figures'."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])

    def slow_callbacks(self) -> list[str]:
        return SLOW_CALLBACK.findall(self.log())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal crispd and wait for it; returns its exit status (SIGKILLed after the timeout)."""
        try:
            if self.proc is None:
                return 0
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
                    raise
            return self.proc.returncode
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
