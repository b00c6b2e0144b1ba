"""The NRI v1alpha1 protocol's messages, enums and services, as NRI release `NRI_VERSION` publishes them
(pkg/api/api.proto of github.com/containerd/nri): field names, numbers and types, written as runtime/protodesc.py
reads them. tests/conformance/test_nri_api.py compiles that release's api.proto and compares it with these."""

from __future__ import annotations

from runtime.protodesc import Service

NRI_VERSION = "v0.12.2"  # the release critest v1.37 and its plugin stub are built with
PACKAGE = "nri.pkg.api.v1alpha1"

_OBJECTS = {
    "PodSandbox": "string id = 1; string name = 2; string uid = 3; string namespace = 4;"
                  "map<string, string> labels = 5; map<string, string> annotations = 6; string runtime_handler = 7;"
                  "LinuxPodSandbox linux = 8; uint32 pid = 9; repeated string ips = 10;",
    "LinuxPodSandbox": "LinuxResources pod_overhead = 1; LinuxResources pod_resources = 2; string cgroup_parent = 3;"
                       "string cgroups_path = 4; repeated LinuxNamespace namespaces = 5; LinuxResources resources = 6;",
    "Container": "string id = 1; string pod_sandbox_id = 2; string name = 3; ContainerState state = 4;"
                 "map<string, string> labels = 5; map<string, string> annotations = 6; repeated string args = 7;"
                 "repeated string env = 8; repeated Mount mounts = 9; Hooks hooks = 10; LinuxContainer linux = 11;"
                 "uint32 pid = 12; repeated POSIXRlimit rlimits = 13; int64 created_at = 14; int64 started_at = 15;"
                 "int64 finished_at = 16; int32 exit_code = 17; string status_reason = 18;"
                 "string status_message = 19; repeated CDIDevice CDI_devices = 20; User user = 21; Image image = 22;",
    "Image": "string name = 1; string digest = 2; string config_digest = 3;",
    "Mount": "string destination = 1; string type = 2; string source = 3; repeated string options = 4;",
    "Hooks": "repeated Hook prestart = 1; repeated Hook create_runtime = 2; repeated Hook create_container = 3;"
             "repeated Hook start_container = 4; repeated Hook poststart = 5; repeated Hook poststop = 6;",
    "Hook": "string path = 1; repeated string args = 2; repeated string env = 3; OptionalInt timeout = 4;",
    "LinuxContainer": "repeated LinuxNamespace namespaces = 1; repeated LinuxDevice devices = 2;"
                      "LinuxResources resources = 3; OptionalInt oom_score_adj = 4; string cgroups_path = 5;"
                      "LinuxIOPriority io_priority = 6; SecurityProfile seccomp_profile = 7;"
                      "LinuxSeccomp seccomp_policy = 8; map<string, string> sysctl = 9;"
                      "map<string, LinuxNetDevice> net_devices = 10; LinuxScheduler scheduler = 11; LinuxRdt rdt = 12;",
    "LinuxNamespace": "string type = 1; string path = 2;",
    "LinuxDevice": "string path = 1; string type = 2; int64 major = 3; int64 minor = 4;"
                   "OptionalFileMode file_mode = 5; OptionalUInt32 uid = 6; OptionalUInt32 gid = 7;",
    "LinuxDeviceCgroup": "bool allow = 1; string type = 2; OptionalInt64 major = 3; OptionalInt64 minor = 4;"
                         "string access = 5;",
    "CDIDevice": "string name = 1;",
    "User": "uint32 uid = 1; uint32 gid = 2; repeated uint32 additional_gids = 3;",
    "LinuxResources": "LinuxMemory memory = 1; LinuxCPU cpu = 2; repeated HugepageLimit hugepage_limits = 3;"
                      "OptionalString blockio_class = 4; OptionalString rdt_class = 5;"
                      "map<string, string> unified = 6; repeated LinuxDeviceCgroup devices = 7; LinuxPids pids = 8;",
    "LinuxMemory": "OptionalInt64 limit = 1; OptionalInt64 reservation = 2; OptionalInt64 swap = 3;"
                   "OptionalInt64 kernel = 4; OptionalInt64 kernel_tcp = 5; OptionalUInt64 swappiness = 6;"
                   "OptionalBool disable_oom_killer = 7; OptionalBool use_hierarchy = 8;",
    "LinuxCPU": "OptionalUInt64 shares = 1; OptionalInt64 quota = 2; OptionalUInt64 period = 3;"
                "OptionalInt64 realtime_runtime = 4; OptionalUInt64 realtime_period = 5; string cpus = 6;"
                "string mems = 7;",
    "HugepageLimit": "string page_size = 1; uint64 limit = 2;",
    "SecurityProfile": "SecurityProfile.ProfileType profile_type = 1; string localhost_ref = 2;",
    "POSIXRlimit": "string type = 1; uint64 hard = 2; uint64 soft = 3;",
    "LinuxPids": "int64 limit = 1;",
    "LinuxIOPriority": "IOPrioClass class = 1; int32 priority = 2;",
    "LinuxNetDevice": "string name = 1;",
    "LinuxScheduler": "LinuxSchedulerPolicy policy = 1; int32 nice = 2; int32 priority = 3;"
                      "repeated LinuxSchedulerFlag flags = 4; uint64 runtime = 5; uint64 deadline = 6;"
                      "uint64 period = 7;",
    "ContainerAdjustment": "map<string, string> annotations = 2; repeated Mount mounts = 3;"
                           "repeated KeyValue env = 4; Hooks hooks = 5; LinuxContainerAdjustment linux = 6;"
                           "repeated POSIXRlimit rlimits = 7; repeated CDIDevice CDI_devices = 8;"
                           "repeated string args = 9;",
    "LinuxContainerAdjustment": "repeated LinuxDevice devices = 1; LinuxResources resources = 2;"
                                "string cgroups_path = 3; OptionalInt oom_score_adj = 4;"
                                "LinuxIOPriority io_priority = 5; LinuxSeccomp seccomp_policy = 6;"
                                "repeated LinuxNamespace namespaces = 7; map<string, string> sysctl = 8;"
                                "map<string, LinuxNetDevice> net_devices = 9; LinuxScheduler scheduler = 10;"
                                "LinuxRdt rdt = 11; LinuxMemoryPolicy memory_policy = 12;",
    "LinuxSeccomp": "string default_action = 1; OptionalUInt32 default_errno = 2; repeated string architectures = 3;"
                    "repeated string flags = 4; string listener_path = 5; string listener_metadata = 6;"
                    "repeated LinuxSyscall syscalls = 7;",
    "LinuxSyscall": "repeated string names = 1; string action = 2; OptionalUInt32 errno_ret = 3;"
                    "repeated LinuxSeccompArg args = 4;",
    "LinuxSeccompArg": "uint32 index = 1; uint64 value = 2; uint64 value_two = 3; string op = 4;",
    "LinuxMemoryPolicy": "MpolMode mode = 1; string nodes = 2; repeated MpolFlag flags = 3;",
    "ContainerUpdate": "string container_id = 1; LinuxContainerUpdate linux = 2; bool ignore_failure = 3;",
    "LinuxContainerUpdate": "LinuxResources resources = 1;",
    "ContainerEviction": "string container_id = 1; string reason = 2;",
    "LinuxRdt": "OptionalString clos_id = 1; OptionalRepeatedString schemata = 2;"
                "OptionalBool enable_monitoring = 3; bool remove = 4;",
    "KeyValue": "string key = 1; string value = 2;",
    "OptionalString": "string value = 1;",
    "OptionalRepeatedString": "repeated string value = 1;",
    "OptionalInt": "int64 value = 1;",
    "OptionalInt32": "int32 value = 1;",
    "OptionalUInt32": "uint32 value = 1;",
    "OptionalInt64": "int64 value = 1;",
    "OptionalUInt64": "uint64 value = 1;",
    "OptionalBool": "bool value = 1;",
    "OptionalFileMode": "uint32 value = 1;",
    "CompoundFieldOwners": "map<string, string> owners = 1;",
    "FieldOwners": "map<int32, string> simple = 1; map<int32, CompoundFieldOwners> compound = 2;",
    "OwningPlugins": "map<string, FieldOwners> owners = 1;",
}

_POD = "PodSandbox pod = 1;"
_POD_CONTAINER = "PodSandbox pod = 1; Container container = 2;"
_REQUESTS = {
    "RegisterPluginRequest": "string plugin_name = 1; string plugin_idx = 2; string NRI_version = 3;",
    "UpdateContainersRequest": "repeated ContainerUpdate update = 1; repeated ContainerEviction evict = 2;",
    "UpdateContainersResponse": "repeated ContainerUpdate failed = 1;",
    "LogRequest": "string msg = 1; LogRequest.Level level = 2;",
    "ConfigureRequest": "string config = 1; string runtime_name = 2; string runtime_version = 3;"
                        "int64 registration_timeout = 4; int64 request_timeout = 5; string NRI_version = 6;",
    "ConfigureResponse": "int32 events = 2;",
    "SynchronizeRequest": "repeated PodSandbox pods = 1; repeated Container containers = 2; bool more = 3;",
    "SynchronizeResponse": "repeated ContainerUpdate update = 1; bool more = 2;",
    "RunPodSandboxRequest": _POD, "RunPodSandboxResponse": "",
    "UpdatePodSandboxRequest": "PodSandbox pod = 1; LinuxResources overhead_linux_resources = 2;"
                               "LinuxResources linux_resources = 3;",
    "UpdatePodSandboxResponse": "",
    "PostUpdatePodSandboxRequest": _POD, "PostUpdatePodSandboxResponse": "",
    "StopPodSandboxRequest": _POD, "StopPodSandboxResponse": "",
    "RemovePodSandboxRequest": _POD, "RemovePodSandboxResponse": "",
    "CreateContainerRequest": _POD_CONTAINER,
    "CreateContainerResponse": "ContainerAdjustment adjust = 1; repeated ContainerUpdate update = 2;"
                               "repeated ContainerEviction evict = 3;",
    "PostCreateContainerRequest": _POD_CONTAINER, "PostCreateContainerResponse": "",
    "StartContainerRequest": _POD_CONTAINER, "StartContainerResponse": "",
    "PostStartContainerRequest": _POD_CONTAINER, "PostStartContainerResponse": "",
    "UpdateContainerRequest": "PodSandbox pod = 1; Container container = 2; LinuxResources linux_resources = 3;",
    "UpdateContainerResponse": "repeated ContainerUpdate update = 1; repeated ContainerEviction evict = 2;",
    "PostUpdateContainerRequest": _POD_CONTAINER, "PostUpdateContainerResponse": "",
    "StopContainerRequest": _POD_CONTAINER,
    "StopContainerResponse": "repeated ContainerUpdate update = 1;",
    "RemoveContainerRequest": _POD_CONTAINER, "RemoveContainerResponse": "",
    "StateChangeEvent": "Event event = 1; PodSandbox pod = 2; Container container = 3;",
    "ValidateContainerAdjustmentRequest": "PodSandbox pod = 1; Container container = 2;"
                                          "ContainerAdjustment adjust = 3; repeated ContainerUpdate update = 4;"
                                          "OwningPlugins owners = 5; repeated PluginInstance plugins = 6;",
    "PluginInstance": "string name = 1; string index = 2;",
    "ValidateContainerAdjustmentResponse": "bool reject = 1; string reason = 2;",
    "Empty": "",
}
MESSAGES = {**_REQUESTS, **_OBJECTS}

EVENTS = ("UNKNOWN", "RUN_POD_SANDBOX", "STOP_POD_SANDBOX", "REMOVE_POD_SANDBOX", "CREATE_CONTAINER",
          "POST_CREATE_CONTAINER", "START_CONTAINER", "POST_START_CONTAINER", "UPDATE_CONTAINER",
          "POST_UPDATE_CONTAINER", "STOP_CONTAINER", "REMOVE_CONTAINER", "UPDATE_POD_SANDBOX",
          "POST_UPDATE_POD_SANDBOX", "VALIDATE_CONTAINER_ADJUSTMENT", "LAST")
FIELDS = ("None", "Annotations", "Mounts", "OciHooks", "Devices", "CdiDevices", "Env", "Args", "MemLimit",
          "MemReservation", "MemSwapLimit", "MemKernelLimit", "MemTCPLimit", "MemSwappiness", "MemDisableOomKiller",
          "MemUseHierarchy", "CPUShares", "CPUQuota", "CPUPeriod", "CPURealtimeRuntime", "CPURealtimePeriod",
          "CPUSetCPUs", "CPUSetMems", "PidsLimit", "HugepageLimits", "BlockioClass", "RdtClass", "CgroupsUnified",
          "CgroupsPath", "OomScoreAdj", "Rlimits", "IoPriority", "SeccompPolicy", "Namespace", "Sysctl",
          "LinuxNetDevices", "LinuxSched", "RdtClosID", "RdtSchemata", "RdtEnableMonitoring", "MemoryPolicy")


def _numbered(names: tuple[str, ...]) -> str:
    return "".join(f"{name} = {number};" for number, name in enumerate(names))


ENUMS = {
    "Event": _numbered(EVENTS),
    "ContainerState": "CONTAINER_UNKNOWN = 0; CONTAINER_CREATED = 1; CONTAINER_PAUSED = 2; CONTAINER_RUNNING = 3;"
                      "CONTAINER_STOPPED = 4;",
    "IOPrioClass": "IOPRIO_CLASS_NONE = 0; IOPRIO_CLASS_RT = 1; IOPRIO_CLASS_BE = 2; IOPRIO_CLASS_IDLE = 3;",
    "LinuxSchedulerPolicy": _numbered(("SCHED_NONE", "SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH",
                                       "SCHED_ISO", "SCHED_IDLE", "SCHED_DEADLINE")),
    "LinuxSchedulerFlag": _numbered(("SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_RECLAIM", "SCHED_FLAG_DL_OVERRUN",
                                     "SCHED_FLAG_KEEP_POLICY", "SCHED_FLAG_KEEP_PARAMS", "SCHED_FLAG_UTIL_CLAMP_MIN",
                                     "SCHED_FLAG_UTIL_CLAMP_MAX")),
    "MpolMode": _numbered(("MPOL_DEFAULT", "MPOL_PREFERRED", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_LOCAL",
                           "MPOL_PREFERRED_MANY", "MPOL_WEIGHTED_INTERLEAVE")),
    "MpolFlag": "MPOL_F_STATIC_NODES = 0; MPOL_F_RELATIVE_NODES = 1; MPOL_F_NUMA_BALANCING = 2;",
    "Field": _numbered(FIELDS),
    "LogRequest.Level": "LEVEL_UNSPECIFIED = 0; LEVEL_DEBUG = 1; LEVEL_INFO = 2; LEVEL_WARN = 3; LEVEL_ERROR = 4;",
    "SecurityProfile.ProfileType": "RUNTIME_DEFAULT = 0; UNCONFINED = 1; LOCALHOST = 2;",
}

_PLUGIN_METHODS = ("Configure", "Synchronize", "RunPodSandbox", "UpdatePodSandbox", "PostUpdatePodSandbox",
                   "StopPodSandbox", "RemovePodSandbox", "CreateContainer", "PostCreateContainer", "StartContainer",
                   "PostStartContainer", "UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer")
SERVICES = (
    Service("Runtime", (("RegisterPlugin", "RegisterPluginRequest", "Empty"),
                        ("UpdateContainers", "UpdateContainersRequest", "UpdateContainersResponse"))),
    Service("Plugin", (
        *((m, f"{m}Request", f"{m}Response") for m in _PLUGIN_METHODS[:2]),
        ("Shutdown", "Empty", "Empty"),
        *((m, f"{m}Request", f"{m}Response") for m in _PLUGIN_METHODS[2:]),
        ("StateChange", "StateChangeEvent", "Empty"),
        ("ValidateContainerAdjustment", "ValidateContainerAdjustmentRequest", "ValidateContainerAdjustmentResponse"),
    )),
    Service("HostFunctions", (("Log", "LogRequest", "Empty"),)),
)
