"""crisp's RuntimeDefault seccomp profile, as data.

The profile has the shape of a Docker/containerd seccomp profile file, so one renderer (`cri.oci.seccomp`)
serves both this profile and Localhost profiles: `archMap` picks the filter architectures for the node,
`includes`/`excludes` make a rule depend on the node's architecture or on the container's bounding
capabilities. What it allows matches the default profiles of containerd and Docker: everything an ordinary
program needs; nothing that administers the host (mount, module loading, clock setting, reboot, kexec, bpf,
namespaces) unless the container holds the capability that would make the call meaningful. Everything else fails
with EPERM. Unknown names (syscalls newer than the node's libseccomp) are skipped by the executor.
"""

from __future__ import annotations

from typing import Any

# errno values the profile uses
_EPERM = 1
_ENOSYS = 38

# Flags of clone(2) that create namespaces: without CAP_SYS_ADMIN, clone may not use any of them.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    _CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET
)

# socket(2) address families a container must not open: AF_ALG (kernel crypto API) and AF_VSOCK.
_AF_ALG = 38
_AF_VSOCK = 40

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the query 0xffffffff.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_FILES = [
    # paths, descriptors, metadata
    "access", "faccessat", "faccessat2", "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock", "ioctl",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat", "statx",
    "statfs", "statfs64", "fstatfs", "fstatfs64",
    "chdir", "fchdir", "getcwd", "mkdir", "mkdirat", "rmdir", "getdents", "getdents64",
    "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat",
    "rename", "renameat", "renameat2", "mknod", "mknodat", "umask",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat",
    "lchown", "lchown32", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
    "truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate", "fadvise64", "fadvise64_64",
    "readahead", "sync", "syncfs", "fsync", "fdatasync", "sync_file_range",
    "copy_file_range", "sendfile", "sendfile64", "splice", "tee", "vmsplice", "cachestat",
    "name_to_handle_at",
    # extended attributes
    "getxattr", "lgetxattr", "fgetxattr", "getxattrat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "listxattr", "llistxattr", "flistxattr", "listxattrat", "removexattr", "lremovexattr", "fremovexattr",
    "removexattrat",
    # mount information (read only)
    "listmount", "statmount",
]

_EVENTS = [
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old",
    "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime", "timerfd_gettime64",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "pipe", "pipe2",
    # asynchronous I/O (io_uring is left out, as containerd and Docker do)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64",
]

_MEMORY = [
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages", "membarrier",
    "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",
]

_PROCESSES = [
    "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid", "waitpid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall", "uretprobe",
    "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "prctl",
    "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "times",
    "getpriority", "setpriority", "ioprio_get", "ioprio_set", "getcpu",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "capget", "capset", "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    "pidfd_open", "pidfd_send_signal", "process_mrelease",
    # ptrace of one's own children is harmless since kernel 4.8 (seccomp is re-checked after a tracer changes a call)
    "ptrace", "process_vm_readv", "process_vm_writev",
    "get_thread_area", "set_thread_area", "uname", "sysinfo", "getrandom",
]

_SIGNALS = [
    "kill", "tkill", "tgkill", "pause", "alarm", "sigaltstack", "sigreturn", "rt_sigreturn", "sigprocmask",
    "rt_sigprocmask", "rt_sigaction", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
]

_IDENTITY = [
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
    "setresuid", "setresuid32", "setresgid", "setresgid32", "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    "setgroups", "setgroups32",
]

_TIME = [
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "adjtimex", "clock_adjtime", "clock_adjtime64",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64",
]

_NETWORK = [
    "socketpair", "socketcall", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt",
    "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
]

_IPC = [
    "ipc", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semtimedop_time64", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_notify", "mq_getsetattr",
]

# Allowed only to a container whose bounding set holds the capability that makes the call meaningful.
_BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
        "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

# Architecture-specific calls, by the names `uname -m` and Go use for the architecture.
_BY_ARCH: list[tuple[list[str], list[str]]] = [
    (["x86_64", "amd64"], ["arch_prctl", "modify_ldt"]),
    (["i386", "i686", "386"], ["modify_ldt"]),
    (["aarch64", "arm64", "arm", "armv7l"], [
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls",
    ]),
    (["ppc64le"], ["sync_file_range2", "swapcontext"]),
    (["s390x", "s390"], ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]),
    (["riscv64"], ["riscv_flush_icache", "riscv_hwprobe"]),
]


def _allow(names: list[str], **extra: Any) -> dict[str, Any]:
    return {"names": sorted(set(names)), "action": "SCMP_ACT_ALLOW", **extra}


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _profile() -> dict[str, Any]:
    common = _FILES + _EVENTS + _MEMORY + _PROCESSES + _SIGNALS + _IDENTITY + _TIME + _NETWORK + _IPC
    syscalls: list[dict[str, Any]] = [_allow(common)]
    # socket(2) for every address family but AF_ALG and AF_VSOCK: three one-condition rules (several conditions
    # on one argument in one rule are OR-ed by runc's libseccomp use, so they could not express "neither")
    syscalls += [
        _allow(["socket"], args=[_arg(0, _AF_ALG, "SCMP_CMP_LT")]),
        _allow(["socket"], args=[_arg(0, _AF_ALG + 1, "SCMP_CMP_EQ")]),
        _allow(["socket"], args=[_arg(0, _AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    syscalls += [_allow(["personality"], args=[_arg(0, value, "SCMP_CMP_EQ")]) for value in _PERSONALITIES]
    syscalls += [_allow(names, includes={"arches": arches}) for arches, names in _BY_ARCH]
    syscalls += [_allow(names, includes={"caps": [cap]}) for cap, names in _BY_CAPABILITY.items()]
    # Without CAP_SYS_ADMIN: clone without namespace flags (on s390 the flags are the second argument), and
    # clone3 (whose flags live in a struct seccomp cannot read) fails with ENOSYS so libc falls back to clone.
    syscalls += [
        _allow(["clone"], args=[_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
               excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}),
        _allow(["clone"], args=[_arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
               includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_MIPS64", "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]},
            {"architecture": "SCMP_ARCH_MIPSEL64",
             "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]},
            {"architecture": "SCMP_ARCH_PPC64LE", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
            {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_LOONGARCH64", "subArchitectures": []},
        ],
        "syscalls": syscalls,
    }


DEFAULT_PROFILE: dict[str, Any] = _profile()
