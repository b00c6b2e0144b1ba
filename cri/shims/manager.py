"""crispd's side of the shims: the zygote that forks them, spawning, and finding them again after a restart.

crispd never forks: it starts the zygote (shim/zygote.py) with asyncio's subprocess and asks it for shims over its
stdin/stdout. A shim is found again from its state dir: `shim.json` names its pid and that pid's start time (field
22 of /proc/<pid>/stat), which defeats pid reuse; `status.json` holds the exit status if the container exited. A
shim that is gone is detected (pidfd) and its container reported exited, with the real exit code when the status
file exists and reason `ShimDied` when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri.shims.client import DEFAULT_TIMEOUT, ShimClient, shim_error
from runtime import errors
from runtime.bundle import EXECUTOR_LOG, executor_argv, idmap_of, load_config, rootfs_path
from runtime.command import run_command
from runtime.linux import idmap
from runtime.linux.sealed import sealed_copy
from runtime.procs import ProcessRef, package_root, process_start_time, processes_with_argument
from shim import protocol
from shim.monitor import binary as monitor_binary
from shim.protocol import ExitStatus, ShimConfig

log = logging.getLogger(__name__)

# an executor's `delete --force` and an `umount` after a shim died
CLEANUP_TIMEOUT = 30.0

# exit code reported for a container whose shim died before writing a status (containerd uses the same)
UNKNOWN_EXIT_CODE = 255
SPAWN_TIMEOUT = 10.0
ZYGOTE_SOCKET = "shim-zygote.sock"  # beside the containers dir, in crispd's state dir
# argv: the package root, the fd of the zygote's own program (which it closes), the fd of the delegates' socket
_ZYGOTE_BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from shim.zygote import main; main()"


@dataclass(frozen=True)
class ShimInfo:
    """What shim.json says about a shim."""

    id: str
    bundle: str
    pid: int
    start_time: int
    socket: str
    config: ShimConfig


@dataclass(frozen=True)
class RecoveredShim:
    """A container found in the state dir when crispd starts: alive (client set) or exited (status set)."""

    id: str
    bundle: str
    client: ShimClient | None
    status: ExitStatus | None
    info: ShimInfo | None


def shim_alive(pid: int, start_time: int) -> bool:
    return pid > 0 and process_start_time(pid) == start_time


def _read_info(bundle: Path) -> ShimInfo | None:
    try:
        data = json.loads((bundle / protocol.INFO_NAME).read_bytes())
        config = ShimConfig.from_json(data["config"])
        return ShimInfo(id=config.id, bundle=str(bundle), pid=int(data["pid"]), start_time=int(data["start_time"]),
                        socket=str(data["socket"]), config=config)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, protocol.ShimError) as exc:
        log.warning("container %s: unreadable %s: %s", bundle.name, protocol.INFO_NAME, exc)
        return None


class ShimManager:
    """Starts shims through the zygote and keeps track of them; one per crispd."""

    def __init__(self, containers_dir: Path, python: str = sys.executable, call_timeout: float = DEFAULT_TIMEOUT,
                 spawn_timeout: float = SPAWN_TIMEOUT, monitor: str | None = None) -> None:
        self.containers_dir = containers_dir
        # the crisp-monitor the shims hand over to once their container runs (None: the built one, if any;
        # "": none, the shims stay Python); its delegates are forked by the zygote on a request to this socket
        self.monitor = monitor_binary() if monitor is None else monitor
        self.zygote_socket = str(containers_dir.parent / ZYGOTE_SOCKET)
        self.python = python
        self.call_timeout = call_timeout
        self.spawn_timeout = spawn_timeout
        self._zygote: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._shims: dict[str, ShimInfo] = {}
        # spawned by this crispd and not asked to create yet: "new" without asking them (`never_told`)
        self._untold: set[str] = set()
        # spawns still under way (`spawn_soon`), by container id
        self._spawning: dict[str, asyncio.Future[ShimClient]] = {}

    # --- the zygote -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and wait until it is ready."""
        # the zygote (so every shim, and every container init the resident executor forks) runs from a sealed copy
        # of the interpreter: through its /proc/self/exe a container reaches no host binary (runtime/linux/sealed.py)
        program = await asyncio.to_thread(sealed_copy, self.python, "crisp-python")
        try:
            listener = await asyncio.to_thread(self._listen) if self.monitor else None
        except BaseException:
            os.close(program)
            raise
        extra = [str(listener.fileno())] if listener is not None else []
        try:
            self._zygote = await asyncio.create_subprocess_exec(
                self.python, "-I", "-S", "-c", _ZYGOTE_BOOTSTRAP, package_root(), str(program), *extra,
                executable=f"/proc/self/fd/{program}", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                close_fds=True, pass_fds=(program, *(int(fd) for fd in extra)))
        finally:
            os.close(program)
            if listener is not None:
                listener.close()  # the zygote's now
        assert self._zygote.stdout is not None
        try:
            line = await asyncio.wait_for(self._zygote.stdout.readline(), self.spawn_timeout)
            hello = json.loads(line) if line else {}
        except (TimeoutError, ValueError):
            hello = {}
        if not hello.get("ready"):
            await self.close()
            raise errors.Unavailable("the shim zygote did not start (see crispd's stderr)")
        log.info("shim zygote ready (pid %s)", hello.get("pid"))
        self._reader_task = asyncio.create_task(self._read_answers())

    def _listen(self) -> socket.socket:
        """The socket the monitors ask the zygote for delegates on (root only; a stale one is replaced)."""
        directory = os.path.dirname(self.zygote_socket)
        os.makedirs(directory, exist_ok=True)
        dir_fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            path = f"/proc/self/fd/{dir_fd}/{ZYGOTE_SOCKET}"  # no sun_path limit on the state dir's path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ZYGOTE_SOCKET, dir_fd=dir_fd)
            sock.bind(path)
            os.chmod(ZYGOTE_SOCKET, 0o600, dir_fd=dir_fd)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dir_fd)
        return sock

    @property
    def zygote_running(self) -> bool:
        return self._zygote is not None and self._zygote.returncode is None

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    async def _read_answers(self) -> None:
        assert self._zygote is not None and self._zygote.stdout is not None
        stdout = self._zygote.stdout
        while line := await stdout.readline():
            try:
                answer = json.loads(line)
            except ValueError:
                log.error("the shim zygote said something unreadable: %r", line[:200])
                continue
            future = self._requests.pop(answer.get("id"), None)
            if future is not None and not future.done():
                future.set_result(answer)
        for future in self._requests.values():
            if not future.done():
                future.set_exception(errors.Unavailable("the shim zygote exited"))
        self._requests.clear()

    async def close(self) -> None:
        """Stop the zygote (the shims go on)."""
        zygote, self._zygote = self._zygote, None
        if zygote is None:
            return
        if self.monitor:  # no zygote serves it any more (the next crispd binds a new one)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.zygote_socket)
        if zygote.stdin is not None:
            zygote.stdin.close()
        try:
            await asyncio.wait_for(zygote.wait(), 5)
        except TimeoutError:
            zygote.kill()
            await zygote.wait()
        if self._reader_task is not None:
            await self._reader_task
            self._reader_task = None

    # --- spawning -------------------------------------------------------------------------------------------

    async def _ask(self, request: dict[str, Any], time_limit: float, late: str) -> dict[str, Any]:
        """The zygote's answer to one request (a new zygote if the last one died); DeadlineExceeded(`late`) if
        none comes within `time_limit`."""
        async with self._lock:
            if self._zygote is not None and self._zygote.returncode is not None:
                log.warning("the shim zygote (pid %d) exited with %s; starting a new one", self._zygote.pid,
                            self._zygote.returncode)
                await self.close()
                await self.start()
        if self._zygote is None or self._zygote.stdin is None:
            raise errors.Unavailable("the shim zygote is not running (ShimManager.start was not called)")
        self._seq += 1
        request_id = self._seq
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        self._zygote.stdin.write(protocol.encode({"id": request_id, **request}))
        try:
            await self._zygote.stdin.drain()
            return await asyncio.wait_for(future, time_limit)
        except TimeoutError:
            raise errors.DeadlineExceeded(late) from None
        except ConnectionError as exc:
            raise errors.Unavailable(f"the shim zygote is gone: {exc}") from None
        finally:
            self._requests.pop(request_id, None)

    async def fork_work(self, work: str, request: dict[str, Any], time_limit: float, what: str) -> dict[str, Any]:
        """Pod namespace work (runtime/namespaces/forked.py) in a process the zygote forks: its answer, checked
        (the error it names raised). runtime.namespaces.pin.Forker."""
        answer = await self._ask({"work": work, "request": request}, time_limit,
                                 f"{what}: not done within {time_limit:g}s")
        if not answer.get("ok"):
            problem = answer.get("error")
            fields = problem if isinstance(problem, dict) else {}
            raise errors.from_kind(fields.get("kind", errors.INTERNAL), str(fields.get("message", f"{what} failed")))
        return answer

    async def spawn(self, config: ShimConfig) -> ShimClient:
        """A ready shim for the container (nothing created yet); returns its client."""
        if self.monitor and not config.monitor:
            config = dataclasses.replace(config, monitor=self.monitor, zygote_socket=self.zygote_socket)
        config.check()
        answer = await self._ask({"config": config.to_json()}, self.spawn_timeout,
                                 f"container {config.id}: no shim within {self.spawn_timeout}s")
        if not answer.get("ok"):
            raise shim_error(answer.get("error"), "shim failed")
        for warning in answer.get("warnings", []):
            # the same host limit applies to every shim: said once at WARNING, then at DEBUG
            if warning in self._warned:
                log.debug("container %s: %s", config.id, warning)
            else:
                self._warned.add(warning)
                log.warning("%s", warning)
        info = ShimInfo(id=config.id, bundle=config.bundle, pid=int(answer["pid"]),
                        start_time=int(answer["start_time"]),
                        socket=os.path.join(config.bundle, protocol.SOCKET_NAME), config=config)
        self._shims[config.id] = info
        self._untold.add(config.id)
        log.info("container %s: shim started (pid %d)", config.id, info.pid)
        return self.client(config.id)

    def spawn_soon(self, config: ShimConfig) -> asyncio.Future[ShimClient]:
        """`spawn(config)` under way, not awaited: its caller may answer before the shim is ready. Whoever needs the
        shim next waits for the spawn first (`settled`: StartContainer, `discard`). A spawn that fails is logged;
        whoever needs the shim then finds none and spawns another."""
        spawning = asyncio.ensure_future(self.spawn(config))
        self._spawning[config.id] = spawning

        def done(future: asyncio.Future[ShimClient]) -> None:
            if self._spawning.get(config.id) is future:
                del self._spawning[config.id]
            if not future.cancelled() and future.exception() is not None:
                log.warning("container %s: its shim did not start: %s", config.id, future.exception())

        spawning.add_done_callback(done)
        return spawning

    async def settled(self, container_id: str) -> None:
        """Once no spawn of the container's shim is under way (`spawn_soon`); its outcome is not this caller's."""
        spawning = self._spawning.get(container_id)
        if spawning is not None:
            await asyncio.wait({spawning})

    async def create(self, config: ShimConfig, call_timeout: float | None = None,
                     placed: Callable[[int], Awaitable[None]] | None = None,
                     held: Callable[[int], Awaitable[None]] | None = None,
                     spawning: Awaitable[ShimClient] | None = None) -> tuple[ShimClient, int]:
        """A shim, and the container created through it: (client, init pid). If create fails the shim has already
        undone it and exited. `placed(shim pid)` runs before the create (the systemd driver gives the shim a scope
        of its own); `held(executor pid)` while the executor waits for its cgroup (ShimClient.create).
        `spawning`: the shim's `spawn(config)`, started earlier by the caller (its undo is the caller's)."""
        client = await (spawning if spawning is not None else self.spawn(config))
        self._untold.discard(config.id)
        try:
            if placed is not None:
                await placed(self._shims[config.id].pid)
            pid = await client.create(call_timeout=call_timeout if call_timeout is not None else self.call_timeout * 2,
                                      held=held)
        except errors.DeadlineExceeded:
            # a shim stuck in create is of no use: make sure it does not stay
            await self.kill_shim(config.id)
            raise
        except BaseException:
            if self.is_alive(config.id) and placed is not None:
                await self.kill_shim(config.id)  # placing it failed: nothing was created
            raise
        return client, pid

    def client(self, container_id: str) -> ShimClient:
        info = self._shims.get(container_id)
        if info is None:
            raise errors.NotFound(f"no shim for container {container_id}")
        return ShimClient(container_id, info.socket, self.call_timeout)

    def info(self, container_id: str) -> ShimInfo | None:
        return self._shims.get(container_id)

    def never_told(self, container_id: str) -> bool:
        """Whether this crispd spawned the container's shim and has not asked it to create: then it is new (if
        it is alive). A shim found after a restart is not known to be: ask it (`ShimClient.state`)."""
        return container_id in self._untold

    def known(self) -> list[ShimInfo]:
        """Every shim crispd knows of (alive or not: `shim_alive` tells, reading /proc)."""
        return list(self._shims.values())

    def forget(self, container_id: str) -> None:
        self._shims.pop(container_id, None)
        self._untold.discard(container_id)

    async def kill_shim(self, container_id: str) -> None:
        info = self._shims.get(container_id)
        if info is not None and shim_alive(info.pid, info.start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, 9)

    # --- exits, dead shims, recovery ------------------------------------------------------------------------

    def is_alive(self, container_id: str) -> bool:
        info = self._shims.get(container_id)
        return info is not None and shim_alive(info.pid, info.start_time)

    async def shim_gone(self, info: ShimInfo) -> None:
        """Resolves when the shim process has ended (pidfd: any process, not only our children)."""
        try:
            fd = os.pidfd_open(info.pid)
        except ProcessLookupError:
            return
        try:
            if process_start_time(info.pid) != info.start_time:
                return  # the pid is someone else's now: ours is gone
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, lambda: None if gone.done() else gone.set_result(None))
            try:
                await gone
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)

    async def wait_exit(self, container_id: str, watching: asyncio.Event | None = None) -> ExitStatus:
        """The container's exit status: from its shim, or, if the shim dies, from the status file, or else
        exit code 255 with reason ShimDied. `watching` is set once the shim has the request (the shim's death is
        watched from the same loop step on)."""
        info = self._shims.get(container_id)
        if info is None:
            raise errors.NotFound(f"no shim for container {container_id}")
        client = self.client(container_id)
        waiting = asyncio.create_task(client.wait(sent=watching))
        died = asyncio.create_task(self.shim_gone(info))
        try:
            done, _ = await asyncio.wait({waiting, died}, return_when=asyncio.FIRST_COMPLETED)
            if waiting in done and waiting.exception() is None:
                return waiting.result()
            if waiting not in done:
                # the shim is gone: its answer may still be in flight, give it a moment
                with contextlib.suppress(TimeoutError, errors.CrispError):
                    return await asyncio.wait_for(asyncio.shield(waiting), 0.5)
            await died
            return await self.dead_shim_status(info)
        finally:
            for task in (waiting, died):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, errors.CrispError):
                        await task

    async def dead_shim_status(self, info: ShimInfo) -> ExitStatus:
        """What is known about the container of a shim that is gone; its remains are cleaned up (a failure is
        logged: the record stays for RemoveContainer to try again)."""
        status = await asyncio.to_thread(protocol.read_status_file, os.path.join(info.bundle, protocol.STATUS_NAME))
        try:
            await self.cleanup_dead(info)
        except errors.CrispError as exc:
            log.warning("container %s: %s", info.id, exc)
        if status is not None:
            return status
        log.warning("container %s: its shim (pid %d) died before the container exited", info.id, info.pid)
        return ExitStatus(exit_code=UNKNOWN_EXIT_CODE, reason="ShimDied",
                          message=f"crisp-shim (pid {info.pid}) died; the container was killed and its exit code "
                                  "is unknown")

    async def cleanup_dead(self, info: ShimInfo) -> None:
        """After a shim died: kill and delete what is left of its container, unmount the rootfs it mounted, and
        then forget it (shim.json goes). A delete or umount that fails keeps the record and raises, so that the
        next try (RemoveContainer, crispd's next start) finds it again."""
        config = info.config
        await _kill_orphaned_commands(info)
        argv = executor_argv(config.executor, config.executor_root, "delete", "--force", config.id,
                             cgroup2_bind=config.cgroup2_bind)
        await _run(argv, f"container {config.id}: delete after its shim died")
        if config.mount_rootfs:
            rootfs = await asyncio.to_thread(_rootfs_of, info.bundle)
            mounted = bool(rootfs) and await asyncio.to_thread(_mounted, rootfs)
            if mounted:
                await _run(["umount", rootfs], f"container {config.id}: umount {rootfs}")
            await _unstage_idmap(info)
        for name in (protocol.INFO_NAME, protocol.SOCKET_NAME):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, os.path.join(info.bundle, name))
        self.forget(config.id)

    async def discard(self, container_id: str) -> None:
        """Make the container and its shim go away: a live shim deletes the container and exits; a dead one's
        remains are cleaned up; nothing known is fine. A container that could not be deleted raises (its record
        stays)."""
        await self.settled(container_id)
        info = self._shims.get(container_id)
        if info is None:
            return
        if self.is_alive(container_id):
            try:
                await self.client(container_id).shutdown(force=True)
            except errors.CrispError as exc:
                log.warning("container %s: shim shutdown failed (%s); killing it", container_id, exc)
                await self.kill_shim(container_id)
                await self.cleanup_dead(info)
        else:
            await self.cleanup_dead(info)
        self.forget(container_id)

    async def recover(self) -> list[RecoveredShim]:
        """Every container in the state dir: reconnected to its live shim, or with what is known of its exit."""
        found: list[RecoveredShim] = []
        bundles = await asyncio.to_thread(_list_bundles, self.containers_dir)
        for bundle in bundles:
            info = await asyncio.to_thread(_read_info, bundle)
            status_path = str(bundle / protocol.STATUS_NAME)
            if info is None:
                status = await asyncio.to_thread(protocol.read_status_file, status_path)
                found.append(RecoveredShim(id=bundle.name, bundle=str(bundle), client=None, status=status,
                                           info=None))
                continue
            if shim_alive(info.pid, info.start_time):
                self._shims[info.id] = info
                log.info("container %s: reconnected to its shim (pid %d)", info.id, info.pid)
                found.append(RecoveredShim(id=info.id, bundle=info.bundle, client=self.client(info.id),
                                           status=None, info=info))
            else:
                status = await self.dead_shim_status(info)
                if await asyncio.to_thread((bundle / protocol.INFO_NAME).exists):
                    # its cleanup failed: known, so that the next discard (a removal's cleanup) tries it again
                    self._shims[info.id] = info
                found.append(RecoveredShim(id=info.id, bundle=info.bundle, client=None, status=status, info=info))
        return found


async def _kill_orphaned_commands(info: ShimInfo) -> None:
    """The executor commands a dead shim had running (their `--log` is its bundle's) would go on creating,
    starting or exec'ing for nobody: they are killed before the container is deleted, so that none of them
    makes something after the delete. (A created container's builtin init still has that command line: it goes
    too, as the delete would have it.)"""
    refs = [ref for pid in await asyncio.to_thread(processes_with_argument, os.path.join(info.bundle, EXECUTOR_LOG))
            if (ref := ProcessRef.of(pid)) is not None]
    for ref in refs:
        log.info("container %s: killing %d, an executor command its dead shim started", info.id, ref.pid)
        ref.signal()
    deadline = asyncio.get_running_loop().time() + CLEANUP_TIMEOUT
    while any(ref.alive() for ref in refs):
        if asyncio.get_running_loop().time() > deadline:
            raise CleanupFailed(f"container {info.id}: executor commands of its dead shim survive SIGKILL")
        await asyncio.sleep(0.01)


def _mounted(path: str) -> bool:
    return os.path.ismount(path)


def _list_bundles(containers_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in containers_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


async def _unstage_idmap(info: ShimInfo) -> None:
    """The id-mapped mounts the dead shim staged under its bundle for the rootfs and volumes (a pod with a user
    namespace); absent ones are fine. Before the bundle goes: removing it would reach through them."""
    try:
        staged = idmap_of(load_config(info.bundle).get("annotations"))
    except errors.CrispError:
        return  # no readable spec: nothing was staged from it
    if staged is None:
        return
    failed = await asyncio.to_thread(idmap.unstage, staged)
    if failed:
        raise CleanupFailed(f"container {info.id}: cannot unmount its id-mapped mounts: {'; '.join(failed)}")


def _rootfs_of(bundle_dir: str) -> str:
    try:
        return rootfs_path(bundle_dir, load_config(bundle_dir))
    except errors.CrispError:
        return ""


class CleanupFailed(errors.CrispError):
    """What a dead shim left could not be removed (INTERNAL); its record stays for the next try."""


async def _run(argv: Sequence[str], what: str) -> None:
    """A clean-up command after a shim died; a failure raises CleanupFailed (`delete --force` of a container that
    is already gone, and an umount of what is not mounted, are not run or succeed)."""
    result = await run_command(argv, kill_after=CLEANUP_TIMEOUT, what=what)
    if result.returncode != 0:
        raise CleanupFailed(f"{what}: exit status {result.returncode}: {result.message()}")
