"""The one module that calls libc directly (ctypes, use_errno=True); everything else calls these wrappers.

Importing it loads nothing: libc is opened on the first call.
"""

from __future__ import annotations

import ctypes
import os

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


# --- prctl (used by crisp-shim) -------------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def set_child_subreaper() -> None:
    """Make the calling process a child subreaper: orphaned descendants are reparented to it, not to init.

    The flag is per process and not inherited by fork(2), so every shim calls this itself.
    """
    _check(_lib().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    _check(_lib().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0), "prctl(PR_GET_CHILD_SUBREAPER)")
    return value.value != 0
