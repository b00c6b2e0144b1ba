"""glibc malloc's knobs, for a long-running daemon's footprint (crispd): how many arenas its threads share, and
giving back what start-up freed."""

from __future__ import annotations

import ctypes

from runtime.linux.syscalls import _libc

M_ARENA_MAX = -8  # mallopt: the most arenas malloc makes (default 8 per core)


def limit_arenas(count: int) -> bool:
    """Let the process's threads share at most `count` malloc arenas; arenas made before are kept. False where
    malloc is not glibc's (no mallopt) or refuses."""
    try:
        mallopt = _libc().mallopt
    except AttributeError:
        return False
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(count)))


def trim() -> bool:
    """Give the free memory of every arena back to the kernel (malloc_trim(0)); True if any was."""
    try:
        malloc_trim = _libc().malloc_trim
    except AttributeError:
        return False
    return bool(malloc_trim(ctypes.c_size_t(0)))
