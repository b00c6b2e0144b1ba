"""The one table that maps crisp's error kinds to gRPC status codes."""

from __future__ import annotations

from cri.rpcserver import StatusCode
from runtime import errors

# Most specific classes first; the first isinstance match wins.
_STATUS_BY_KIND: tuple[tuple[type[errors.CrispError], StatusCode], ...] = (
    (errors.NotFound, StatusCode.NOT_FOUND),
    (errors.AlreadyExists, StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, StatusCode.DEADLINE_EXCEEDED),
    (errors.Unimplemented, StatusCode.UNIMPLEMENTED),
    (errors.Cancelled, StatusCode.CANCELLED),
)


def status_code_for(exc: BaseException) -> StatusCode:
    """The gRPC status code for an exception: its kind's code, INTERNAL for anything unexpected."""
    for kind, code in _STATUS_BY_KIND:
        if isinstance(exc, kind):
            return code
    return StatusCode.INTERNAL
