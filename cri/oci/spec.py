"""CRI ContainerConfig + PodSandboxConfig + image config -> an OCI runtime-spec document (a dict for config.json).

`build_container_spec(SpecInputs)` is a pure function: everything it needs from the host is gathered beforehand
(`NodeFacts.probe()` once at start, `inspect_host()` per request, the image's /etc/passwd and /etc/group through
an `ImageFiles` reader), so it can be tested without root and gives the same spec for the same inputs.
It follows containerd's CRI plugin where the CRI leaves room (argument merging, environment order, default
capabilities and mounts, user resolution), and raises `runtime.errors` kinds for bad requests
(INVALID_ARGUMENT), for requests this node cannot honour (FAILED_PRECONDITION) and for what crisp does not
support (UNIMPLEMENTED).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from cri import api as cri
from cri.config import OciConfig
from cri.oci.capabilities import CapabilityRequest, container_capabilities
from cri.oci.host import HostPaths, NodeFacts
from cri.oci.mounts import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ImageVolume,
    PodFiles,
    assemble_mounts,
    check_bind_targets,
    cri_binds,
    cri_devices,
    host_devices,
    pod_binds,
)
from cri.oci.resources import oci_resources
from cri.oci.seccomp import parse_profile, render_profile, requested_seccomp
from cri.oci.seccomp_default import DEFAULT_PROFILE
from cri.oci.user import ImageFiles, StaticFiles, UserDatabase, UserRequest, resolve_user
from cri.oci.userns import (
    PodUserns,
    Stager,
    bundle_of,
    check_container_userns,
    idmap_annotation,
    idmapped_binds,
    idmapped_overlay,
    pod_userns,
)
from runtime.bundle import IDMAP_ANNOTATION, OVERLAY_ANNOTATION, TERM, Overlay, merge_env
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.namespaces.sysctl import check_sysctls, pod_host_namespaces

OCI_VERSION = "1.0.2"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The annotations containerd puts on a container's spec (tools and NRI plugins read them).
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NS_MODE = cri.NamespaceMode
_PROFILE_TYPE = cri.SecurityProfile.ProfileType
_GROUPS_POLICY = cri.SupplementalGroupsPolicy


@dataclass(frozen=True)
class PodContext:
    """What crisp knows about the container's pod."""

    sandbox_id: str
    # the pod's pinned namespaces (bind mounts under <state>/sandboxes/<id>/ns/); unused for host namespaces
    net_ns_path: str = ""
    ipc_ns_path: str = ""
    uts_ns_path: str = ""
    # the PID namespace of the pod's init, when the pod shares one (NamespaceMode POD)
    pid_ns_path: str = ""
    # the PID namespace of the container named by NamespaceOption.target_id (NamespaceMode TARGET)
    target_pid_ns_path: str = ""
    # the pod's hostname, hosts, resolv.conf and shm dir, bound unless a CRI mount targets the same path
    files: PodFiles = field(default_factory=PodFiles)
    # the pod's own user namespace (userns_options POD), which the container joins
    userns: PodUserns | None = None


@dataclass(frozen=True)
class SpecOptions:
    """Node-wide choices: from the `[oci]` config section and what the runtime handler supports."""

    # clamp a requested oom_score_adj below crispd's own up to crispd's (a process cannot lower it otherwise)
    restrict_oom_score_adj: bool = False
    # RLIMIT_NOFILE (soft, hard) of container processes; None = what crispd runs with
    nofile: tuple[int, int] | None = None
    # the runtime handler can make bind mounts recursively read-only (mount_setattr)
    recursive_read_only: bool = True
    # memory.swap can be limited on this node (a memory limit then also caps swap, as containerd does)
    swap_limit: bool = True
    # CRI container and pod annotations copied into the spec: exact keys, or prefixes ending in "*"
    container_annotations: tuple[str, ...] = ()
    pod_annotations: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: OciConfig, node: NodeFacts, *, recursive_read_only: bool = True) -> SpecOptions:
        if config.restrict_oom_score_adj == "auto":
            restrict = not node.has_sys_resource
        else:
            restrict = config.restrict_oom_score_adj == "on"
        nofile = None
        if config.nofile_soft or config.nofile_hard:
            nofile = (config.nofile_soft or config.nofile_hard, config.nofile_hard or config.nofile_soft)
        return cls(
            restrict_oom_score_adj=restrict,
            nofile=nofile,
            recursive_read_only=recursive_read_only,
            container_annotations=tuple(config.container_annotations),
            pod_annotations=tuple(config.pod_annotations),
        )


@dataclass(frozen=True, eq=False)
class SpecInputs:
    """Everything `build_container_spec` reads."""

    container_id: str
    config: cri.ContainerConfig
    sandbox_config: cri.PodSandboxConfig
    # the image config's `config` object (User, Env, Entrypoint, Cmd, WorkingDir, StopSignal, ...)
    image_config: Mapping[str, Any]
    pod: PodContext
    node: NodeFacts
    # root.path: the rootfs mount point, <bundle>/rootfs
    rootfs_path: str
    # linux.cgroupsPath: the container's cgroup (runtime.cgroups.paths.container_cgroup_path), made by the caller
    cgroup_path: str
    overlay: Overlay | None = None
    # the image name the container was created from (an annotation)
    image_name: str = ""
    # the image's files (for /etc/passwd and /etc/group)
    image_files: ImageFiles = field(default_factory=StaticFiles)
    host: HostPaths = field(default_factory=HostPaths)
    # the images of the CRI mounts that have one, by container path
    image_volumes: Mapping[str, ImageVolume] = field(default_factory=dict)
    options: SpecOptions = field(default_factory=SpecOptions)


# ---------------------------------------------------------------------------------------------- process


def _string_list(image_config: Mapping[str, Any], key: str) -> list[str]:
    value = image_config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"the image config's {key} must be a list of strings")
    return list(value)


def _env_entry(key: str, value: bytes) -> str:
    """One `KEY=value` of the CRI's environment (the value is bytes in the cri-api crisp speaks; the OCI spec is
    JSON, so it must be UTF-8)."""
    if not key or "=" in key:
        raise InvalidArgument(f"invalid environment variable name {key!r}")
    try:
        return f"{key}={value.decode()}"
    except UnicodeDecodeError:
        raise InvalidArgument(f"environment variable {key!r}: the value is not UTF-8") from None


def _string(image_config: Mapping[str, Any], key: str) -> str:
    value = image_config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"the image config's {key} must be a string")
    return value


def process_args(config: cri.ContainerConfig, image_config: Mapping[str, Any]) -> list[str]:
    """The kubelet's rules: `command` replaces the image's Entrypoint and drops its Cmd; `args` replace Cmd."""
    command, args = list(config.command), list(config.args)
    entrypoint = _string_list(image_config, "Entrypoint")
    cmd = _string_list(image_config, "Cmd")
    if not command:
        if not args:
            args = cmd
        if entrypoint != [""]:
            command = entrypoint
    argv = command + args
    if not argv:
        raise InvalidArgument("no command specified: neither the container config nor the image has one")
    return argv


def _user_request(sc: cri.LinuxContainerSecurityContext) -> UserRequest:
    policy = sc.supplemental_groups_policy
    if policy not in (_GROUPS_POLICY.Merge, _GROUPS_POLICY.Strict):
        raise InvalidArgument(f"unknown supplemental_groups_policy {policy}")
    return UserRequest(
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        supplemental_groups=tuple(sc.supplemental_groups),
        strict_groups=policy == _GROUPS_POLICY.Strict,
    )


def _rlimits(inputs: SpecInputs) -> list[dict[str, Any]]:
    soft, hard = inputs.options.nofile or inputs.node.nofile
    return [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": min(soft, hard)}]


def _oom_score_adj(inputs: SpecInputs) -> int | None:
    linux = inputs.config.linux
    if not linux.HasField("resources"):
        return None
    adj = linux.resources.oom_score_adj
    if not -1000 <= adj <= 1000:
        raise InvalidArgument(f"oom_score_adj {adj} is outside -1000..1000")
    if inputs.options.restrict_oom_score_adj and adj < inputs.node.oom_score_adj:
        adj = inputs.node.oom_score_adj
    return adj


# ---------------------------------------------------------------------------------------------- namespaces


def _namespaces(inputs: SpecInputs, privileged: bool) -> tuple[list[dict[str, str]], bool]:
    """`linux.namespaces`, and whether the container has the pod's own UTS namespace (so may set a hostname)."""
    pod = inputs.pod
    pod_ns = inputs.sandbox_config.linux.security_context.namespace_options
    ctr_ns = inputs.config.linux.security_context.namespace_options
    sid = pod.sandbox_id
    check_container_userns(pod_ns, ctr_ns)
    if pod_userns(pod_ns) is not None and pod.userns is None:
        raise FailedPrecondition(f"pod {sid} has no user namespace")
    for kind in ("network", "ipc", "pid"):
        if getattr(ctr_ns, kind) == _NS_MODE.NODE and getattr(pod_ns, kind) != _NS_MODE.NODE:
            raise InvalidArgument(f"the container asks for the host {kind} namespace but pod {sid} does not use it")
    for kind in ("network", "ipc"):
        if getattr(ctr_ns, kind) in (_NS_MODE.CONTAINER, _NS_MODE.TARGET):
            raise InvalidArgument(f"a container cannot have its own {kind} namespace (only POD or NODE)")

    namespaces = [{"type": "mount"}]
    if pod.userns is not None:
        namespaces.insert(0, {"type": "user", "path": pod.userns.path})
    host_network = pod_ns.network == _NS_MODE.NODE
    if not host_network:
        if not pod.net_ns_path:
            raise FailedPrecondition(f"pod {sid} has no network namespace")
        namespaces.append({"type": "network", "path": pod.net_ns_path})
        # hostNetwork pods use the host's UTS namespace too; others have the pod's
        if not pod.uts_ns_path:
            raise FailedPrecondition(f"pod {sid} has no UTS namespace")
        namespaces.append({"type": "uts", "path": pod.uts_ns_path})
    if pod_ns.ipc != _NS_MODE.NODE:
        if not pod.ipc_ns_path:
            raise FailedPrecondition(f"pod {sid} has no IPC namespace")
        namespaces.append({"type": "ipc", "path": pod.ipc_ns_path})

    pid_mode = ctr_ns.pid
    if pid_mode == _NS_MODE.CONTAINER:
        namespaces.append({"type": "pid"})
    elif pid_mode == _NS_MODE.POD:
        if pod_ns.pid == _NS_MODE.NODE:
            pass  # the pod shares the host's
        elif not pod.pid_ns_path:
            raise InvalidArgument(f"the container asks for the pod's PID namespace but pod {sid} does not share one")
        else:
            namespaces.append({"type": "pid", "path": pod.pid_ns_path})
    elif pid_mode == _NS_MODE.TARGET:
        if not ctr_ns.target_id:
            raise InvalidArgument("PID namespace mode TARGET needs a target_id")
        if not pod.target_pid_ns_path:
            raise FailedPrecondition(f"the PID namespace of target container {ctr_ns.target_id} is not known")
        namespaces.append({"type": "pid", "path": pod.target_pid_ns_path})
    elif pid_mode != _NS_MODE.NODE:
        raise InvalidArgument(f"unknown PID namespace mode {pid_mode}")

    # without one, the container's cgroup2 mount is the host's whole tree (on a hybrid host too: containers only
    # ever see the v2 hierarchy); a privileged container sees the host's, as with runc and containerd. In a user
    # namespace, cgroupfs can only be mounted from a cgroup namespace it owns
    if (inputs.node.cgroup_namespaces and not privileged) or pod.userns is not None:
        namespaces.append({"type": "cgroup"})
    return namespaces, not host_network


def pod_sysctls(sandbox_config: cri.PodSandboxConfig) -> dict[str, str]:
    """The pod's sysctls for `linux.sysctl`, by the rulebook RunPodSandbox checked them with."""
    ns = sandbox_config.linux.security_context.namespace_options
    host = pod_host_namespaces(host_network=ns.network == _NS_MODE.NODE, host_ipc=ns.ipc == _NS_MODE.NODE)
    return check_sysctls(sandbox_config.linux.sysctls, host)


# ---------------------------------------------------------------------------------------------- resources


def _resources(inputs: SpecInputs, device_rules: list[dict[str, Any]], privileged: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if privileged:
        out["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        out["devices"] = [{"allow": False, "access": "rwm"}, *device_rules]
    if inputs.config.linux.HasField("resources"):
        out.update(oci_resources(inputs.config.linux.resources, swap_limit=inputs.options.swap_limit))
    return out


# ---------------------------------------------------------------------------------------------- annotations


def _passthrough(source: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    out = {}
    for key, value in source.items():
        for pattern in patterns:
            if key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1])):
                out[key] = value
                break
    return out


def _annotations(inputs: SpecInputs) -> dict[str, str]:
    out = _passthrough(inputs.sandbox_config.annotations, inputs.options.pod_annotations)
    out.update(_passthrough(inputs.config.annotations, inputs.options.container_annotations))
    meta = inputs.sandbox_config.metadata
    out.update(
        {
            ANNOTATION_CONTAINER_TYPE: "container",
            ANNOTATION_CONTAINER_NAME: inputs.config.metadata.name,
            ANNOTATION_SANDBOX_ID: inputs.pod.sandbox_id,
            ANNOTATION_SANDBOX_NAME: meta.name,
            ANNOTATION_SANDBOX_NAMESPACE: meta.namespace,
            ANNOTATION_SANDBOX_UID: meta.uid,
            ANNOTATION_IMAGE_NAME: inputs.image_name,
        }
    )
    out.pop(OVERLAY_ANNOTATION, None)
    out.pop(IDMAP_ANNOTATION, None)
    return out


# ---------------------------------------------------------------------------------------------- security


def _seccomp(inputs: SpecInputs, privileged: bool, bounding: Sequence[str]) -> dict[str, Any] | None:
    if privileged:
        return None  # whatever was asked for, even something malformed (as containerd)
    request = requested_seccomp(inputs.config.linux.security_context)
    if request.kind == "unconfined":
        return None
    if request.kind == "runtime_default":
        return render_profile(DEFAULT_PROFILE, arch=inputs.node.arch, capabilities=bounding, source="RuntimeDefault")
    profile_file = inputs.host.seccomp_profiles.get(request.path)
    if profile_file is None or profile_file.data is None:
        reason = profile_file.error if profile_file is not None else "was not read"
        raise InvalidArgument(f"seccomp profile {request.path}: {reason}")
    profile = parse_profile(profile_file.data, request.path)
    return render_profile(profile, arch=inputs.node.arch, capabilities=bounding, source=request.path)


def _check_apparmor(sc: cri.LinuxContainerSecurityContext, privileged: bool) -> None:
    if privileged:
        return
    if sc.HasField("apparmor"):
        wants_profile = sc.apparmor.profile_type == _PROFILE_TYPE.Localhost
    else:
        wants_profile = sc.apparmor_profile.startswith("localhost/")
    if wants_profile:
        raise FailedPrecondition("an AppArmor profile was requested but AppArmor is not available to crisp")


# ---------------------------------------------------------------------------------------------- the builder


def build_container_spec(inputs: SpecInputs) -> dict[str, Any]:
    """The OCI runtime spec (config.json content) of a container."""
    config, image = inputs.config, inputs.image_config
    if not _CONTAINER_ID.fullmatch(inputs.container_id):
        raise InvalidArgument(f"invalid container id {inputs.container_id!r}")
    sc = config.linux.security_context
    privileged = sc.privileged
    if privileged and not inputs.sandbox_config.linux.security_context.privileged:
        raise InvalidArgument(f"a privileged container is not allowed in the unprivileged pod {inputs.pod.sandbox_id}")
    _check_apparmor(sc, privileged)

    # process
    args = process_args(config, image)
    cwd = config.working_dir or _string(image, "WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
    user = resolve_user(_user_request(sc), _string(image, "User"), UserDatabase(inputs.image_files))
    hostname = inputs.sandbox_config.hostname
    env = [DEFAULT_PATH_ENV]
    if config.tty:
        env = merge_env(env, [TERM])
    env = merge_env(env, ["HOSTNAME=" + (hostname or inputs.node.hostname)])
    env = merge_env(env, _string_list(image, "Env"))
    env = merge_env(env, [_env_entry(kv.key, cast(bytes, kv.value)) for kv in config.envs])
    if not any(e.startswith("HOME=") for e in env):
        env.append("HOME=" + user.home)

    capabilities = container_capabilities(
        CapabilityRequest(
            add=tuple(sc.capabilities.add_capabilities),
            drop=tuple(sc.capabilities.drop_capabilities),
            add_ambient=tuple(sc.capabilities.add_ambient_capabilities),
        ),
        privileged=privileged,
        available=inputs.node.capabilities,
    )
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities,
        "rlimits": _rlimits(inputs),
        "noNewPrivileges": sc.no_new_privs,
    }
    oom = _oom_score_adj(inputs)
    if oom is not None:
        process["oomScoreAdj"] = oom

    # mounts and devices
    binds = cri_binds(config.mounts, inputs.host.mounts, rro_supported=inputs.options.recursive_read_only,
                      image_volumes=inputs.image_volumes)
    check_bind_targets(binds, inputs.image_files)
    taken = {posixpath.normpath(b.container_path) for b in binds}
    files = inputs.pod.files
    if sc.namespace_options.ipc == _NS_MODE.NODE or (
        inputs.sandbox_config.linux.security_context.namespace_options.ipc == _NS_MODE.NODE
    ):
        files = PodFiles(files.hostname, files.hosts, files.resolv_conf, "/dev/shm")
    userns = inputs.pod.userns
    overlay = inputs.overlay
    annotations = _annotations(inputs)
    if userns is not None:
        stager = Stager(bundle_of(inputs.rootfs_path))
        if overlay is not None:
            overlay = idmapped_overlay(overlay, stager)
        binds = idmapped_binds(binds, stager)
        annotations[IDMAP_ANNOTATION] = idmap_annotation(userns, stager)
    if overlay is not None:
        annotations[OVERLAY_ANNOTATION] = overlay.annotation()
    binds += pod_binds(files, taken, readonly_rootfs=sc.readonly_rootfs)
    mounts, rootfs_propagation = assemble_mounts(binds, privileged=privileged)
    devices, device_rules = cri_devices(config.devices, inputs.host.devices)
    if privileged:
        have = {d["path"] for d in devices}
        devices += [d for d in host_devices(inputs.host.host_devices) if d["path"] not in have]

    namespaces, own_uts = _namespaces(inputs, privileged)
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": inputs.cgroup_path,
        "resources": _resources(inputs, device_rules, privileged),
    }
    if devices:
        linux["devices"] = devices
    sysctls = pod_sysctls(inputs.sandbox_config)
    if sysctls:
        linux["sysctl"] = sysctls
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    if not privileged:
        linux["maskedPaths"] = list(sc.masked_paths) or list(DEFAULT_MASKED_PATHS)
        linux["readonlyPaths"] = list(sc.readonly_paths) or list(DEFAULT_READONLY_PATHS)
    seccomp = _seccomp(inputs, privileged, capabilities["bounding"])
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if userns is not None:
        linux["uidMappings"] = userns.oci_mappings(userns.uids)
        linux["gidMappings"] = userns.oci_mappings(userns.gids)

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs_path, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": dict(sorted(annotations.items())),
        "linux": linux,
    }
    if own_uts and hostname:
        spec["hostname"] = hostname
    return spec
