"""An OCI seccomp section -> a libseccomp filter, loaded into the calling process.

As runc does: syscall names this libseccomp does not know are skipped (profiles list syscalls of newer kernels),
several conditions on the same argument become one rule each (libseccomp cannot AND them), and libseccomp is told
not to set no_new_privs itself: that is the process spec's decision alone.
"""

from __future__ import annotations

import errno
import logging

from runtime import errors
from runtime.executor.oci import Seccomp, SeccompRule
from runtime.linux.syscalls import libseccomp as scmp

log = logging.getLogger(__name__)

_FLAG_ATTRS = {
    "SECCOMP_FILTER_FLAG_LOG": scmp.SCMP_FLTATR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": scmp.SCMP_FLTATR_CTL_SSB,
}


def _action(name: str, errno_ret: int | None, where: str) -> int:
    if name == "SCMP_ACT_ALLOW":
        return scmp.SCMP_ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return scmp.scmp_act_errno(errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_KILL" or name == "SCMP_ACT_KILL_THREAD":
        return scmp.SCMP_ACT_KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return scmp.SCMP_ACT_KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return scmp.SCMP_ACT_TRAP
    if name == "SCMP_ACT_TRACE":
        return scmp.scmp_act_trace(errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_LOG":
        return scmp.SCMP_ACT_LOG
    raise errors.InvalidArgument(f"{where}: unsupported seccomp action {name!r}")


def _arch_name(token: str) -> str:
    # SCMP_ARCH_X86_64 -> x86_64, the names seccomp_arch_resolve_name() takes
    return token.removeprefix("SCMP_ARCH_").lower()


def _conditions(rule: SeccompRule, where: str) -> list[list[tuple[int, int, int, int]]]:
    """The rule's conditions as libseccomp tuples, split into several rules where an argument repeats."""
    conds = []
    for arg in rule.args:
        op = scmp.SCMP_CMP.get(arg.op)
        if op is None:
            raise errors.InvalidArgument(f"{where}: unknown seccomp operator {arg.op!r}")
        conds.append((arg.index, op, arg.value, arg.value_two))
    indexes = [c[0] for c in conds]
    if len(set(indexes)) == len(indexes):
        return [conds]
    return [[c] for c in conds]


class SeccompProgram:
    """A filter built (and checked) early, loaded late: building may fail with a clear error, loading is last."""

    def __init__(self, profile: Seccomp) -> None:
        default = _action(profile.default_action, profile.default_errno_ret, "linux.seccomp.defaultAction")
        self._filter = scmp.SeccompFilter(default)
        try:
            self._filter.set_attr(scmp.SCMP_FLTATR_CTL_NNP, 0)
            for arch in profile.architectures:
                self._filter.add_arch(_arch_name(arch))
            for flag in profile.flags:
                attr = _FLAG_ATTRS.get(flag)
                if attr is None:
                    raise errors.InvalidArgument(f"linux.seccomp.flags: unsupported flag {flag!r}")
                self._filter.set_attr(attr, 1)
            for i, rule in enumerate(profile.syscalls):
                self._add(rule, f"linux.seccomp.syscalls[{i}]", default)
        except BaseException:
            self._filter.release()
            raise

    def _add(self, rule: SeccompRule, where: str, default: int) -> None:
        action = _action(rule.action, rule.errno_ret, where)
        if action == default:
            return  # libseccomp refuses rules that repeat the default action
        for name in rule.names:
            number = scmp.seccomp_syscall_number(name)
            if number == scmp.NR_SCMP_ERROR:
                log.debug("seccomp: skipping syscall %s unknown to libseccomp", name)
                continue
            for conds in _conditions(rule, where):
                try:
                    self._filter.add_rule(action, number, conds)
                except OSError as exc:
                    raise errors.InvalidArgument(f"{where}: seccomp rule for {name}: {exc.strerror}") from None

    def load(self) -> None:
        try:
            self._filter.load()
        finally:
            self._filter.release()
