"""Reading and writing cgroup interface files, with errno mapped to crisp's error kinds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from runtime import errors


def read(path: Path) -> str | None:
    """The file's text, or None when the file does not exist (a controller that is not enabled)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup was removed while we read
            return None
        raise


def write(path: Path, value: str) -> None:
    """Write one value in a single write(2), as the kernel wants; errors name the file and the value."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.FailedPrecondition(f"{path} does not exist (controller not enabled?)") from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise _error(exc, path, value) from exc
    finally:
        os.close(fd)


def _error(exc: OSError, path: Path, value: str) -> errors.CrispError:
    what = f"writing {value!r} to {path}: {exc.strerror}"
    if exc.errno in (errno.EINVAL, errno.ERANGE):
        return errors.InvalidArgument(what)
    if exc.errno in (errno.ENOENT, errno.ENODEV):
        return errors.NotFound(what)
    if exc.errno in (errno.ESRCH,):
        return errors.NotFound(what)
    return errors.FailedPrecondition(what)


def read_flat_keyed(path: Path) -> dict[str, int] | None:
    """A "key value" per line file (cpu.stat, memory.stat, memory.events, ...); None when it does not exist."""
    text = read(path)
    if text is None:
        return None
    return parse_flat_keyed(text)


def parse_flat_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and _is_int(parts[1]):
            out[parts[0]] = int(parts[1])
    return out


def parse_nested_keyed(text: str) -> dict[str, dict[str, str]]:
    """Lines of "name key=value key=value ..." (io.stat, PSI files)."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name:
            continue
        fields = {}
        for item in rest.split():
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        out[name] = fields
    return out


def read_single_int(path: Path) -> int | None:
    """A one-number file (memory.current, pids.current); None when missing; "max" is None too."""
    text = read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if _is_int(text) else None


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()
