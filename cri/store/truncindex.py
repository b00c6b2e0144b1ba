"""Find an object by its full id or a unique prefix of it (crictl and the kubelet show truncated ids)."""

from __future__ import annotations

from collections.abc import Iterable

from runtime import errors


def resolve_id(ids: Iterable[str], wanted: str, what: str) -> str:
    """The one id that equals or starts with `wanted`; NOT_FOUND if none, INVALID_ARGUMENT if ambiguous."""
    if not wanted:
        raise errors.InvalidArgument(f"a {what} id is required")
    matches = []
    for candidate in ids:
        if candidate == wanted:
            return candidate
        if candidate.startswith(wanted):
            matches.append(candidate)
    if not matches:
        raise errors.NotFound(f"{what} {wanted!r} not found")
    if len(matches) > 1:
        raise errors.InvalidArgument(f"{what} id prefix {wanted!r} is ambiguous ({len(matches)} match)")
    return matches[0]
