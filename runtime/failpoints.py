"""Every fail point of crisp, in one place: the steps of each operation that changes state, in the order they run.

A fail point sits right after a step (after the step's undo is registered, where there is one). `[debug]` in
crispd's config names points where crispd fails on purpose (`fail_points`: the step's work is undone as any
failure's), pauses (`delay_points`) or stops until it is killed (`hang_points`: the kill -9 tests). The code calls a
point by its name (`cri.debug.DebugPoints`); a name that is not listed here is a bug, and so is a step without a
point (tests/unit/test_failpoints.py reads the functions named in `STEP_FUNCTIONS`).

Standard library only: crispd, the image puller and the shim import it.
"""

from __future__ import annotations

from typing import Protocol

# operation -> its points, in the order the steps run
STEPS: dict[str, tuple[str, ...]] = {
    "RunPodSandbox": (
        "run_pod_sandbox.name", "run_pod_sandbox.dir", "run_pod_sandbox.cgroup", "run_pod_sandbox.namespaces",
        "run_pod_sandbox.netns_name", "run_pod_sandbox.pod_init", "run_pod_sandbox.pod_init_cgroup",
        "run_pod_sandbox.files", "run_pod_sandbox.shm_dir", "run_pod_sandbox.shm", "run_pod_sandbox.network",
        "run_pod_sandbox.nri", "run_pod_sandbox.record",
    ),
    "CreateContainer": (
        "create_container.name", "create_container.dirs", "create_container.working_dir", "create_container.cdi",
        "create_container.nri", "create_container.spec", "create_container.shim", "create_container.record",
    ),
    # the container made (what CreateContainer left: its shim ready, the executor's create, the row's pid), started
    "StartContainer": (
        "start_container.shim_ready", "start_container.created", "start_container.pid", "start_container.nri",
        "start_container.shim", "start_container.record",
    ),
    "StopContainer": (
        "stop_container.signal", "stop_container.grace", "stop_container.kill", "stop_container.killed",
        "stop_container.cgroup",
    ),
    "RemoveContainer": ("remove_container.stopped", "remove_container.record", "remove_container.name"),
    # not an RPC: a removed container's remains, cleaned up after RemoveContainer answered (from its journal entry)
    "ContainerCleanup": ("container_cleanup.shim", "container_cleanup.dirs", "container_cleanup.journal"),
    "StopPodSandbox": (
        "stop_pod_sandbox.containers", "stop_pod_sandbox.processes", "stop_pod_sandbox.nri",
        "stop_pod_sandbox.network", "stop_pod_sandbox.netns", "stop_pod_sandbox.record",
    ),
    "RemovePodSandbox": (
        "remove_pod_sandbox.stopped", "remove_pod_sandbox.containers", "remove_pod_sandbox.network",
        "remove_pod_sandbox.shm", "remove_pod_sandbox.pod_init", "remove_pod_sandbox.namespaces",
        "remove_pod_sandbox.cgroup", "remove_pod_sandbox.dir", "remove_pod_sandbox.record",
        "remove_pod_sandbox.name",
    ),
    "PullImage": (
        "pull_image.metadata", "pull_image.layer_fetched", "pull_image.layer_unpacked", "pull_image.layers",
        "pull_image.record",
    ),
    # not an RPC: crispd's start, before it recovers and says it is ready
    "crispd": ("crispd.ready",),
    # the shim's steps (only `hang_points`: a shim stops there until it is killed, see shim/server.py): up and
    # serving, the rootfs mounted (OCI runtimes), the container created, started, an exec started, the init's
    # exit recorded (before anyone heard of it), the container deleted (before the shim's files go)
    "shim": ("shim.listening", "shim.rootfs", "shim.created", "shim.started", "shim.exec", "shim.exited",
             "shim.deleted"),
}

# operation -> the coroutines ("module:Class.function") whose every step (an `await` statement) must be followed by
# a point before the next one; a statement that changes nothing (a read) says so in a `# no fail point: <why>`
# comment
STEP_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "RunPodSandbox": ("cri.lifecycle.pods:PodSandboxController._make",),
    "CreateContainer": ("cri.service.container_create:_create_in_pod",),
    "StartContainer": ("cri.lifecycle.containers:ContainerController.start",
                       "cri.lifecycle.containers:ContainerController._make"),
    "StopContainer": ("cri.lifecycle.containers:ContainerController._stop",),
    "RemoveContainer": ("cri.lifecycle.containers:ContainerController._remove",),
    "ContainerCleanup": ("cri.lifecycle.containers:ContainerController._clean_up",),
    "StopPodSandbox": ("cri.lifecycle.pods:PodSandboxController._stop",),
    "RemovePodSandbox": ("cri.lifecycle.pods:PodSandboxController.remove",
                         "cri.lifecycle.pods:PodSandboxController._dismantle"),
    "PullImage": ("cri.service.images:ImageManager._pull", "runtime.image.pull:Puller._pull"),
}

ALL: frozenset[str] = frozenset(point for points in STEPS.values() for point in points)


def check(name: str) -> str:
    """The name, if it is a point; ValueError if it is not (a typo in code or in a config)."""
    if name not in ALL:
        raise ValueError(f"{name!r} is not a fail point (runtime/failpoints.py lists them)")
    return name


def refusal(name: str, hang: bool) -> str:
    """Why a config cannot name this point (empty if it can): unknown, or a shim's, which only stops (hang)."""
    if name not in ALL:
        return f"{name!r} is not a fail point (runtime/failpoints.py lists them)"
    if not hang and operation_of(name) == "shim":
        return f"{name!r} is a shim's point: a shim only stops there (hang_points)"
    return ""


def operation_of(point: str) -> str:
    """The operation a point belongs to (KeyError for a name that is not a point)."""
    for operation, points in STEPS.items():
        if point in points:
            return operation
    raise KeyError(point)


class Points(Protocol):
    """What code that runs steps is given: a point on the event loop, and one in a worker thread."""

    async def point(self, name: str) -> None: ...

    def point_in_thread(self, name: str) -> None: ...


class NoPoints:
    """Points that do nothing (code used outside crispd, and tests of it)."""

    async def point(self, name: str) -> None:
        check(name)

    def point_in_thread(self, name: str) -> None:
        check(name)
