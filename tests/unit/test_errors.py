"""The error-kind -> status code table (runtime/ttrpc/wire.py), for gRPC answers and ttrpc ones."""

from __future__ import annotations

import errno
import os

import pytest

from cri.rpcserver import StatusCode
from runtime import errors
from runtime.ttrpc import server as ttrpc_server
from runtime.ttrpc.wire import code_of


def status_code_for(exc: BaseException) -> StatusCode:
    return code_of(exc, StatusCode.INTERNAL)  # what crispd's RPC guard answers


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFound("x"), StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument("x"), StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("x"), StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable("x"), StatusCode.UNAVAILABLE),
        (errors.ResourceExhausted("x"), StatusCode.RESOURCE_EXHAUSTED),
        (errors.DeadlineExceeded("x"), StatusCode.DEADLINE_EXCEEDED),
        (errors.Unimplemented("x"), StatusCode.UNIMPLEMENTED),
        (errors.Cancelled("x"), StatusCode.CANCELLED),
        (errors.CrispError("x"), StatusCode.INTERNAL),
        (ValueError("x"), StatusCode.INTERNAL),
        (OSError(5, "EIO"), StatusCode.INTERNAL),
    ],
)
def test_kind_maps_to_code(exc: BaseException, code: StatusCode) -> None:
    assert status_code_for(exc) is code


def test_subclasses_keep_their_kind() -> None:
    class ImageNotFound(errors.NotFound):
        pass

    assert status_code_for(ImageNotFound("busybox")) is StatusCode.NOT_FOUND


def test_every_kind_is_mapped() -> None:
    kinds = [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, errors.CrispError)]
    internal = StatusCode.INTERNAL
    unmapped = [k.__name__ for k in kinds if k is not errors.CrispError and status_code_for(k("x")) is internal]
    assert unmapped == []


def test_ttrpc_answers_use_the_same_table() -> None:
    for cls in errors.KINDS.values():
        assert ttrpc_server.status_of(cls("m")) == (status_code_for(cls("m")), "m")
    assert ttrpc_server.status_of(ValueError()) == (StatusCode.UNKNOWN, "ValueError")  # not a kind: UNKNOWN


class _Extra(Exception):
    pass


def test_wire_kinds_round_trip() -> None:
    """The one decoder of `{"kind", "message"}` (shim client, namespace pinning, network helper, executor)."""
    for cls in errors.KINDS.values():
        decoded = errors.from_kind(errors.kind_of(cls("m")), "m")
        assert type(decoded) is cls and str(decoded) == "m"
    assert errors.kind_of(ValueError("x")) == errors.INTERNAL
    assert type(errors.from_kind(errors.INTERNAL, "x")) is errors.CrispError
    assert type(errors.from_kind("CrispError", "x", fallback=_Extra)) is _Extra
    assert type(errors.from_kind("_Extra", "x", extra=(_Extra,))) is _Extra
    assert type(errors.from_kind(None, "x")) is errors.CrispError


def test_a_full_filesystem_is_resource_exhausted_naming_what() -> None:
    with pytest.raises(errors.ResourceExhausted, match=r"no space left to write blob sha256:ab in /images "
                                                       r"\(/images/tmp/blob-1\): No space left on device"):
        with errors.writing("blob sha256:ab in /images"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/images/tmp/blob-1")
    with pytest.raises(errors.ResourceExhausted, match=r"^no space left to write pod x in /run/p: Disk quota"):
        with errors.writing("pod x in /run/p"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/run/p")  # its path is named already
    with pytest.raises(PermissionError):  # anything else goes on as it is
        with errors.writing("pod x"):
            raise PermissionError(errno.EACCES, "Permission denied", "/run/p")
