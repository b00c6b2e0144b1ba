"""The one table that maps crisp's error kinds to gRPC status codes."""

from __future__ import annotations

import grpc

from runtime import errors

# Most specific classes first; the first isinstance match wins.
_STATUS_BY_KIND: tuple[tuple[type[errors.CrispError], grpc.StatusCode], ...] = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
)


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception: its kind's code, INTERNAL for anything unexpected."""
    for kind, code in _STATUS_BY_KIND:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
