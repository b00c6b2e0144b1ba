"""Error kinds shared by every layer of crisp.

Code below the gRPC server raises these; `runtime/ttrpc/wire.py`'s `KIND_CODES` maps each kind to one status code
in exactly one place (gRPC and ttrpc carry the same codes). Anything that is not a kind becomes INTERNAL in crispd's
answers and is logged with its traceback.
Messages say what was wrong and with which id.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class CrispError(Exception):
    """Base of every expected failure; the subclass says which kind."""


class NotFound(CrispError):
    """The named object (pod, container, image, ...) does not exist."""


class AlreadyExists(CrispError):
    """A name or id is already taken."""


class InvalidArgument(CrispError):
    """The request itself is wrong (bad reference, bad config value, unknown handler, ...)."""


class FailedPrecondition(CrispError):
    """The request is fine but the object is in the wrong state for it."""


class Unavailable(CrispError):
    """crispd (or something it depends on) cannot serve the request right now; retrying may help."""


class ResourceExhausted(CrispError):
    """A limit was hit (too many streams, tokens, ...)."""


class DeadlineExceeded(CrispError):
    """The operation did not finish within its timeout."""


class Unimplemented(CrispError):
    """The operation is not implemented (yet)."""


class Cancelled(CrispError):
    """The operation was cancelled by its caller."""


# ---------------------------------------------------------------------------------------------- the wire form
# Helpers, the shim and the executor report a failure as {"kind": <class name>, "message": ...}; the reader turns
# it back into the kind with `from_kind`. Every such decoder goes through here.

INTERNAL = "Internal"  # the wire name of anything that is not one of the kinds below

KINDS: dict[str, type[CrispError]] = {
    cls.__name__: cls
    for cls in (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, Unavailable, ResourceExhausted,
                DeadlineExceeded, Unimplemented, Cancelled)
}


# -------------------------------------------------------------------------------------------- a full filesystem

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(what: str, exc: OSError) -> ResourceExhausted:
    """The ResourceExhausted that a full filesystem (or quota) is, naming what could not be written."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in what else ""
    return ResourceExhausted(f"no space left to write {what}{where}: {exc.strerror}")


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Inside: a full filesystem (ENOSPC, EDQUOT) is ResourceExhausted naming `what`; other errors pass as they
    are. `what` says what was being written, with its path."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(what, exc) from exc
        raise


def kind_of(exc: BaseException) -> str:
    """The wire name of an error's kind: a `KINDS` name, else "Internal"."""
    for name, cls in KINDS.items():
        if isinstance(exc, cls):
            return name
    return INTERNAL


def from_kind(kind: object, message: str, fallback: type[Exception] = CrispError,
              extra: tuple[type[Exception], ...] = ()) -> Exception:
    """The exception a wire error names: one of `KINDS` (or of `extra`, by class name), else `fallback`."""
    name = str(kind)
    cls = KINDS.get(name) or next((c for c in extra if c.__name__ == name), fallback)
    return cls(message)
