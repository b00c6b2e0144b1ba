"""crispd: the CRI daemon's command line, and the object graph built from one Config."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from cri import rpcserver, slowcallbacks
from cri.config import Config, ConfigError, dump_toml, load_config, parse_host_port, redact, with_overrides
from cri.debug import DebugPoints
from cri.logformat import setup_logging
from cri.metrics import Metrics, StateSnapshot
from cri.metrics_server import MetricsServer
from cri.network import build_network
from cri.oci import NodeFacts
from cri.pod_metrics import pod_sandbox_metrics
from cri.recovery import recover
from cri.server import Readiness, RpcGuard
from cri.service.context import ServiceContext
from cri.service.images import ImageManager, InUse
from cri.service.servicers import add_servicers
from cri.shims.manager import ShimManager, shim_alive
from cri.store.containers import ContainerStore
from cri.store.db import SchemaTooNew, Store
from cri.store.sandboxes import SandboxStore
from cri.streaming.containers import ContainerStreams
from cri.streaming.server import StreamingServer
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.linux.syscalls import malloc
from runtime.lockfile import LockFile
from runtime.systemd import notify
from runtime.version import VERSION
from runtime.workers import DEFAULT_WORKERS, started_pool

log = logging.getLogger("crispd")

# the kubelet's own limit for CRI messages is 16 MiB; ExecSync output alone may come close to it
MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 64 * 1024
# malloc arenas: the main thread's and one that every other thread shares (glibc's default is up to 8 per core)
MALLOC_ARENAS = 2


class StartupError(Exception):
    """crispd cannot start; the message says why."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crispd", description="crisp: a Kubernetes CRI v1 container runtime")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "config", "doctor", "version"),
                        help="run the daemon (default), print the effective config as TOML, check this node for "
                             "what would keep pods from starting (exit 0: all well, 1: pods cannot start, 2: "
                             "warnings), or print the version")
    parser.add_argument("--config", help="config file (default /etc/crisp/crisp.toml; missing means defaults)")
    parser.add_argument("--root", help="root dir for persistent data (overrides the config's root)")
    parser.add_argument("--state", help="state dir for volatile data (overrides the config's state)")
    parser.add_argument("--listen", help="the CRI unix socket (overrides the config's listen)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="log lines as text, or one JSON object per line for log shippers")
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help="the Prometheus endpoint (overrides [metrics] address; empty turns it off)")
    parser.add_argument("--streaming-address", metavar="IP[:PORT]",
                        help="the exec/attach/port-forward server (overrides [streaming] address, and port if given)")
    parser.add_argument("--version", action="version", version=f"crispd {VERSION}")
    return parser.parse_args(argv)


def _socket_path(value: str | None) -> str | None:
    if value is not None and value.startswith("unix://"):
        return value[len("unix://"):]
    return value


def _prepare_socket_dir(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        os.chmod(parent, 0o700)


def _freeze_startup_heap() -> None:
    """Leave what start-up made (modules, protobuf descriptors, the recovered pods: some 45,000 objects) to
    the collector's permanent generation: otherwise each full collection, which the RPCs' allocations trigger every
    few seconds under a kubelet's polling, walks all of them while holding the GIL, and stalls the loop for 50-80 ms
    on a busy 2-core host. What dies later is still freed by its reference count."""
    gc.collect()
    gc.freeze()
    malloc.trim()  # what start-up freed (import-time garbage, the collection's) goes back to the kernel


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a crispd that died; we hold the socket's lock, so nobody serves on it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    log.info("removing stale socket %s", path)
    path.unlink()


def _discover_cgroups() -> CgroupV2Manager | None:
    try:
        return CgroupV2Manager.discover()
    except errors.FailedPrecondition as exc:
        log.warning("%s: pods cannot be run", exc)
        return None


class Daemon:
    """crispd's lifetime: locks, store, gRPC server, signals, clean shutdown."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.socket = Path(config.listen)
        self.readiness = Readiness()
        self.metrics = Metrics()
        self.store = Store(Path(config.root) / "crisp.db")
        self.sandboxes = SandboxStore(self.store)
        self.containers = ContainerStore(self.store)
        self.debug = DebugPoints(config.debug)
        self.images = ImageManager(config, self.store, on_fetched=self.metrics.image_pull_bytes.inc,
                                   in_use=self._images_in_use, points=self.debug)
        self._locks: list[LockFile] = []
        self._stop: asyncio.Event | None = None
        # systemd's notify socket is crispd's alone: taken out of the environment before any child is started
        self._notify_env = {"NOTIFY_SOCKET": os.environ.pop("NOTIFY_SOCKET", "")}

    async def _images_in_use(self) -> InUse:
        """For image GC: the images and snapshots the containers still use (also those removed whose cleanup is
        not done: their rootfs may still be mounted)."""
        metas = [c.meta for c in self.containers.all()] + self.containers.removing()  # mounted until cleaned up
        return InUse(images=frozenset(m.image_id for m in metas),
                     snapshots=frozenset(d for m in metas for d in (*m.lowerdirs, *m.volume_snapshots)))

    def _acquire_locks(self) -> None:
        wanted = {
            Path(self.config.root) / "crispd.lock": f"root dir {self.config.root}",
            Path(self.config.state) / "crispd.lock": f"state dir {self.config.state}",
            Path(str(self.socket) + ".lock"): f"socket {self.socket}",
        }
        for path, what in wanted.items():  # a dict: the same dir named twice is locked once
            lock = LockFile(path)
            lock.acquire(what)
            self._locks.append(lock)

    def _release_locks(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def request_stop(self, signame: str) -> None:
        assert self._stop is not None
        if not self._stop.is_set():
            log.info("received %s, shutting down", signame)
            self._stop.set()

    def run(self) -> None:
        """Take the dirs and locks (before any event loop exists), then serve until signalled."""
        # before any thread starts: crispd's threads (workers, sqlite, pulls) share one malloc arena
        # instead of glibc's up to 8 per core, each keeping its own free pages resident
        malloc.limit_arenas(MALLOC_ARENAS)
        Path(self.config.root).mkdir(parents=True, exist_ok=True, mode=0o700)
        # searchable, not listable (as containerd's): runc walks to a user-namespaced pod's rootfs and files as the
        # pod's root, a host uid; what is private below it is 0700 itself
        Path(self.config.state).mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(self.config.state, 0o711)
        _prepare_socket_dir(self.socket)
        self._acquire_locks()
        try:
            self.store.prestart()
            self.images.prestart()
            # asyncio.to_thread's pool, every thread started now (runtime/workers.py says why)
            self._workers = started_pool(DEFAULT_WORKERS, "crisp-worker")
            asyncio.run(self._main())
        finally:
            self._release_locks()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self._workers)
        if self.config.debug.slow_callback_ms > 0:
            loop.set_debug(True)
            slowcallbacks.install(self.config.debug.slow_callback_ms / 1000)
            # start-up (building the gRPC server, binding) blocks before anything is served: the threshold
            # applies from readiness on, see _serve
            loop.slow_callback_duration = 3600.0
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        await self._serve(self._stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        try:
            await self.store.open()
        except SchemaTooNew as exc:
            raise StartupError(f"{self.store.path}: {exc}") from None
        server: rpcserver.Server | None = None
        listening = False
        network = build_network(self.config, self.store)
        images: ImageManager | None = None
        shims = ShimManager(Path(self.config.state) / "containers", monitor=None if self.config.shim.monitor else "")
        if self.config.shim.monitor and not shims.monitor:
            log.warning("crisp-monitor is not built (scripts/build-monitor): the shims stay Python processes")
        ctx: ServiceContext | None = None
        streaming: StreamingServer | None = None
        metrics_server: MetricsServer | None = None
        try:
            await self.images.start()
            images = self.images
            await shims.start()
            network.start()
            streaming = StreamingServer(self.config.streaming, ContainerStreams(self.containers, self.sandboxes, shims))
            await streaming.start()
            ctx = ServiceContext.wire(
                config=self.config, store=self.store, metrics=self.metrics, readiness=self.readiness, images=images,
                sandboxes=self.sandboxes, containers=self.containers, shims=shims, streaming=streaming,
                network=network, debug=self.debug, cgroups=await asyncio.to_thread(_discover_cgroups),
                node=await asyncio.to_thread(NodeFacts.probe))
            if self.config.metrics.address:
                wired = ctx
                metrics_server = MetricsServer(self.config.metrics.address, self.metrics, self.readiness,
                                               lambda: _state_snapshot(wired))
                try:
                    await metrics_server.start()
                except OSError as exc:
                    metrics_server = None
                    raise StartupError(f"cannot serve metrics on {self.config.metrics.address}: {exc}") from None
            server = rpcserver.Server(max_message_bytes=MAX_MESSAGE_BYTES)
            add_servicers(server, ctx, RpcGuard(self.readiness, self.metrics).wrap)
            _remove_stale_socket(self.socket)
            old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-accessible
            try:
                await server.listen(self.socket)
                listening = True
            except OSError as exc:
                raise StartupError(f"cannot listen on {self.socket}: {exc}") from None
            finally:
                os.umask(old_umask)
            os.chmod(self.socket, 0o660)
            await ctx.debug.point("crispd.ready")
            await recover(ctx)
            await ctx.nri.start()
            _freeze_startup_heap()
            await asyncio.sleep(0)  # the collection ends this step, still outside the slow-callback check
            self.readiness.set_ready()
            if self.config.debug.slow_callback_ms > 0:
                asyncio.get_running_loop().slow_callback_duration = self.config.debug.slow_callback_ms / 1000
            log.info("crispd %s serving CRI v1 on %s (root %s, state %s)", VERSION, self.socket,
                     self.config.root, self.config.state)
            # under systemd (Type=notify) the unit is active only now, so `After=crispd.service` means "serving"
            notify(f"READY=1\nSTATUS=serving CRI v1 on {self.socket}", self._notify_env)
            await stop.wait()
        finally:
            notify("STOPPING=1", self._notify_env)
            self.readiness.set_not_ready("crispd is stopping")
            if ctx is not None:
                ctx.events.broker.close()  # event streams end, so that the server's grace period is not spent on them
            if server is not None:
                # in-flight RPCs get the grace period; new ones are refused from now on
                await server.stop(self.config.shutdown_grace_seconds)
            if ctx is not None:
                await ctx.creations.settle_now()  # every answer has left: no creation waits for its retry
            # nothing is served any more: like start-up, shutdown is outside the slow-callback check
            asyncio.get_running_loop().slow_callback_duration = 3600.0
            if listening:
                with contextlib.suppress(FileNotFoundError):
                    self.socket.unlink()
            if streaming is not None:
                await streaming.stop()
            if metrics_server is not None:
                await metrics_server.close()
            if ctx is not None:
                await ctx.nri.stop()
                await ctx.container_control.close()
                await ctx.cgroup_driver.close()
            await shims.close()  # the zygote ends; the shims and their containers go on
            await network.close()
            if images is not None:
                await images.close()
            await self.store.close()
            log.info("crispd stopped")


async def _state_snapshot(ctx: ServiceContext) -> StateSnapshot:
    """What exists now, for the metrics page (counted on the loop, where the stores live), with the workloads'
    cAdvisor metrics."""
    try:
        workloads = await pod_sandbox_metrics(ctx.stats, ctx.sandboxes, ctx.containers, ctx.clock_ns())
    except Exception as exc:  # the page still shows crispd's own metrics
        log.warning("metrics: cannot read the pods' metrics: %s", exc)
        workloads = []
    shims = [(i.pid, i.start_time) for i in ctx.shims.known()]
    return StateSnapshot(workloads=workloads,
        containers=collections.Counter(c.status.state for c in ctx.containers.all()),
        pods=collections.Counter(s.status.state for s in ctx.sandboxes.all()),
        event_subscribers=ctx.events.broker.subscribers, ready=ctx.readiness.ready,
        shims_alive=lambda: sum(shim_alive(pid, start) for pid, start in shims))


def _config(args: argparse.Namespace) -> Config:
    """The config file with the command line's overrides, checked as one."""
    config = load_config(args.config)
    metrics = streaming = None
    if args.metrics_address is not None:
        metrics = dataclasses.replace(config.metrics, address=args.metrics_address)
    if args.streaming_address is not None:
        address, port = args.streaming_address, config.streaming.port
        if not _is_ip(address):
            try:
                address, port = parse_host_port(address)
            except ValueError as exc:
                raise ConfigError(f"--streaming-address: {exc}") from None
        streaming = dataclasses.replace(config.streaming, address=address, port=port)
    return with_overrides(config, root=args.root, state=args.state, listen=_socket_path(args.listen),
                          log_level=args.log_level, log_format=args.log_format, metrics=metrics,
                          streaming=streaming)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "version":
        print(f"crispd {VERSION}")
        return 0
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"crispd: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(dump_toml(redact(config)))
        return 0
    if args.command == "doctor":
        from cri.doctor.main import doctor  # not needed to serve

        return doctor(config)
    setup_logging(config.log_level, config.log_format)
    try:
        Daemon(config).run()
    except (StartupError, errors.CrispError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
