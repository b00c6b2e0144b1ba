"""The shim drives real containers through runc and crun: create, start, exit codes, signals, early exits."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal

import pytest

from cri.shims.client import ShimInternalError
from runtime import errors
from runtime.linux import sealed
from tests.integration.shim.helpers import ShimEnv, joined_output, run

pytestmark = pytest.mark.root


def test_exit_code_times_and_log(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "echo hello; echo oops >&2; exit 3"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, pid = await manager.create(shim_env.config(cid))
            assert pid > 0
            state = await client.state()
            assert state.state == "created" and state.pid == pid
            started = await client.start()
            status = await manager.wait_exit(cid)
            assert status.exit_code == 3 and status.signal == 0
            assert status.started_at == started > 0
            assert status.finished_at >= status.started_at
            assert not status.oom_killed
            state = await client.state()
            assert state.state == "stopped" and state.status == status
            await client.shutdown()

    run(scenario())
    log = shim_env.logs / f"{cid}.log"
    assert joined_output(log, "stdout") == b"hello\n"
    assert joined_output(log, "stderr") == b"oops\n"
    status_file = shim_env.containers / cid / "status.json"
    assert '"exit_code": 3' in status_file.read_text()


def test_the_builtin_executor_runs_in_forks_of_the_shim(builtin_env: ShimEnv) -> None:
    """crisp's own executor is resident: the shim runs its commands (create, start, exec, kill, delete) in forks of
    itself, so they work with no executor program on disk at all (the argv only names it in messages)."""
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])
    missing = builtin_env.base / "no-such-dir" / "crisp-executor"

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, _ = await manager.create(dataclasses.replace(builtin_env.config(cid), executor=[str(missing)],
                                                                 resident=1))
            await client.start()
            result = await client.exec_sync(["sh", "-c", "echo in $(hostname)"])
            assert result.exit_code == 0 and result.stdout == b"in crisp-shimtest\n"
            await client.kill(signal.SIGKILL)
            assert (await client.wait(call_timeout=10)).signal == signal.SIGKILL
            await client.shutdown()

    run(scenario())
    assert not missing.parent.exists()


def test_a_containers_init_reaches_no_host_binary_through_proc_self_exe(builtin_env: ShimEnv) -> None:
    """Until its final exec a container's init is a fork of the shim: its /proc/self/exe (what a `#!/proc/self/exe`
    entrypoint would run) is the zygote's sealed in-memory copy of the interpreter, not the host's file, and nobody
    can write to it."""
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, pid = await manager.create(builtin_env.config(cid))
            assert (await client.state()).state == "created"  # the init waits for start, before its final exec
            assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:crisp-python")
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
            try:
                assert sealed.is_sealed(fd)  # F_SEAL_WRITE: no write through any fd, also once nothing runs it
            finally:
                os.close(fd)
            await client.start()  # answers once the init made its final exec: now the image's program
            assert os.readlink(f"/proc/{pid}/exe").endswith("/busybox")
            await client.kill(signal.SIGKILL)
            await client.wait(call_timeout=10)
            await client.shutdown()

    run(scenario())


def test_killed_by_signal(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            assert (await client.state()).state == "running"
            with pytest.raises(errors.FailedPrecondition):
                await client.shutdown()  # still running and no force
            await client.kill(signal.SIGKILL)
            status = await manager.wait_exit(cid)
            assert status.exit_code == 128 + signal.SIGKILL and status.signal == signal.SIGKILL
            await client.shutdown()

    run(scenario())


def test_exit_before_start_returns(shim_env: ShimEnv) -> None:
    """A container that ends at once: its exit is caught even if it comes before `start` has returned."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["true"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            waiting = asyncio.create_task(client.wait())
            await client.start()
            status = await waiting
            assert status.exit_code == 0 and status.started_at > 0
            await client.shutdown()

    run(scenario())


def test_exit_before_start_was_asked(runc_env: ShimEnv) -> None:
    """The init dies while the container is only created: start is refused, the exit is reported."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            client, pid = await manager.create(runc_env.config(cid))
            os.kill(pid, signal.SIGKILL)
            status = await manager.wait_exit(cid)
            assert status.exit_code == 137 and status.started_at == 0
            with pytest.raises(errors.FailedPrecondition):
                await client.start()
            await client.shutdown()

    run(scenario())


def test_a_failed_delete_keeps_the_record(runc_env: ShimEnv) -> None:
    """When the executor's `delete` fails the container may still hold processes, mounts or its cgroup: the shim
    answers the shutdown with the executor's words, keeps shim.json (the record of what is left), its socket and
    the rootfs mount, and serves on; the next shutdown deletes it all."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sleep", "1000"])
    refuse = runc_env.base / "refuse-delete"
    # runc, except that `delete` fails while the marker file exists
    script = f'case " $* " in *" delete "*) if [ -e {refuse} ]; then echo "delete refused" >&2; exit 1; fi;; ' \
             'esac; exec runc "$@"'
    bundle = runc_env.containers / cid

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            config = dataclasses.replace(runc_env.config(cid),
                                         executor=["/bin/sh", "-c", script, "runc-refusing-delete"])
            client, _ = await manager.create(config)
            await client.start()
            await client.kill(signal.SIGKILL)
            await manager.wait_exit(cid)
            refuse.touch()
            with pytest.raises(errors.CrispError, match="delete refused"):
                await client.shutdown()
            assert (bundle / "shim.json").exists() and (bundle / "shim.sock").exists()
            assert (bundle / "rootfs").is_mount()
            assert (await client.state()).state == "stopped"  # still serving
            refuse.unlink()
            await client.shutdown()
            assert not (bundle / "shim.json").exists() and not (bundle / "rootfs").is_mount()

    run(scenario())


def test_a_forced_shutdown_deletes_after_the_kill_all_ends(runc_env: ShimEnv) -> None:
    """A forced shutdown kills the init and runs `kill --all`. runc freezes the cgroup while it signals every
    process, and a `delete` that loads the stopped container and then finds its cgroup frozen fails ("invalid
    state transition from stopped to paused"), so the shim deletes only once the kill has ended. The wrapper
    makes the kill last a second and writes down when each command starts and ends."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sleep", "1000"])
    journal = runc_env.base / "journal"
    script = (f'case " $* " in *" kill --all "*) echo kill-start >> {journal}; sleep 1; runc "$@"; s=$?; '
              f'echo kill-end >> {journal}; exit $s;; *" delete "*) echo delete >> {journal};; esac; '
              'exec runc "$@"')

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            config = dataclasses.replace(runc_env.config(cid),
                                         executor=["/bin/sh", "-c", script, "runc-slow-kill"])
            client, _ = await manager.create(config)
            await client.start()
            await client.shutdown(force=True)
            assert journal.read_text().split() == ["kill-start", "kill-end", "delete"]
            assert not (runc_env.containers / cid / "shim.json").exists()

    run(scenario())


def test_create_failure_is_typed_and_leaves_nothing(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["/no/such/binary"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            try:
                client, _ = await manager.create(shim_env.config(cid))
                with pytest.raises(errors.CrispError) as failure:
                    await client.start()
                assert "no/such/binary" in str(failure.value) or "no such file" in str(failure.value).lower()
                await client.shutdown(force=True)
            except errors.CrispError as exc:
                # crun reports a missing binary at create time; the shim then cleans up and exits by itself
                assert "no/such/binary" in str(exc) or "no such file" in str(exc).lower(), exc

    run(scenario())


def test_an_executor_refusal_keeps_its_kind(shim_env: ShimEnv) -> None:
    """What crisp-executor refuses reaches crispd with the kind the executor gave it (a bad spec at create or exec
    is InvalidArgument, a limit without its controller FailedPrecondition), not as an internal error; runc's and
    crun's failures name no kind."""
    cid, bad = shim_env.new_id(), shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])
    shim_env.bundle(bad, ["sleep", "1000"])
    spec_path = shim_env.containers / bad / "config.json"
    spec = json.loads(spec_path.read_text())
    spec["linux"]["namespaces"].append({"type": "no-such-namespace"})
    spec_path.write_text(json.dumps(spec))

    def kind(builtin: type[errors.CrispError]) -> type[errors.CrispError]:
        return builtin if shim_env.builtin else ShimInternalError

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            # crun 1.8 leaves the cgroup of a create it refused (its `delete` knows no such container): not asked
            if shim_env.executor != "crun":
                with pytest.raises(errors.CrispError) as create:
                    await manager.create(shim_env.config(bad))
                assert type(create.value) is kind(errors.InvalidArgument), create.value
                assert "no-such-namespace" in str(create.value)
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            with pytest.raises(errors.CrispError) as exec_:
                await client.exec_sync(["/no/such/program"])
            assert type(exec_.value) is kind(errors.InvalidArgument), exec_.value
            assert "/no/such/program" in str(exec_.value)
            with pytest.raises(errors.CrispError) as update:
                await client.update({"unified": {"no.such.file": "1"}})
            assert type(update.value) is kind(errors.FailedPrecondition), update.value
            await client.kill(signal.SIGKILL)
            await manager.wait_exit(cid)
            await client.shutdown()

    run(scenario())


def test_rootfs_of_many_layers(runc_env: ShimEnv) -> None:
    """45 layers do not fit mount(2)'s page of options as absolute paths: the shim names them relative to their
    common parent. Every layer is visible in the container, the topmost first."""
    cid = runc_env.new_id()
    bundle = runc_env.bundle(cid, ["sh", "-c", "cat /layer; ls /layers-seen | wc -l"])
    layers = runc_env.layers / cid / "snapshots"
    lowers = []
    for i in range(45):
        fs = layers / f"{i:064x}" / "fs"
        if i == 44:
            fs.parent.mkdir(parents=True)
            fs.symlink_to(runc_env.rootfs)  # the bottom layer: busybox
        else:
            (fs / "layers-seen").mkdir(parents=True)
            (fs / "layers-seen" / str(i)).write_text("")
            (fs / "layer").write_text(f"{i}\n")
        lowers.append(str(fs))
    assert len("lowerdir=" + ":".join(lowers)) > 4096
    spec = json.loads((bundle / "config.json").read_text())
    overlay = json.loads(spec["annotations"]["io.crisp.rootfs.overlay"])
    overlay["lowerdirs"] = lowers
    spec["annotations"]["io.crisp.rootfs.overlay"] = json.dumps(overlay)
    (bundle / "config.json").write_text(json.dumps(spec))

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            client, _ = await manager.create(runc_env.config(cid))
            await client.start()
            assert (await manager.wait_exit(cid)).exit_code == 0
            await client.shutdown()

    run(scenario())
    assert joined_output(runc_env.logs / f"{cid}.log") == b"0\n44\n"


def test_a_dead_zygote_is_replaced(runc_env: ShimEnv) -> None:
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["true"])

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            old = manager.zygote_pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            for _ in range(500):
                if not manager.zygote_running:
                    break
                await asyncio.sleep(0.02)
            client, _ = await manager.create(runc_env.config(cid))
            assert manager.zygote_pid not in (None, old)
            await client.start()
            assert (await manager.wait_exit(cid)).exit_code == 0
            await client.shutdown()

    run(scenario())


def test_update_goes_through_the_executor(shim_env: ShimEnv) -> None:
    """New limits reach the container's cgroup through the executor's `update` (the component that owns the
    cgroup, as runc has it); an executor's refusal comes back typed; nothing is left of the request."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            await client.update({"unified": {"cgroup.max.descendants": "11"}})
            limit = await asyncio.to_thread((shim_env.cgroup_dir(cid) / "cgroup.max.descendants").read_text)
            assert limit.strip() == "11"
            with pytest.raises(errors.InvalidArgument):
                await client.update([])  # type: ignore[arg-type]
            with pytest.raises(errors.CrispError):
                await client.update({"unified": {"cgroup.max.descendants": "not a number"}})
            assert not (shim_env.containers / cid / "update.json").exists()
            await client.kill(signal.SIGKILL)
            await manager.wait_exit(cid)
            with pytest.raises(errors.FailedPrecondition):
                await client.update({"unified": {"cgroup.max.descendants": "12"}})
            await client.shutdown()

    run(scenario())
