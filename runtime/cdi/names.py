"""CDI's names: a kind `vendor/class`, a device `vendor/class=name`, and the `cdi.k8s.io/` annotations that list
devices (comma separated), as the CDI spec and its reference parser define them."""

from __future__ import annotations

from collections.abc import Mapping

from runtime import errors

ANNOTATION_PREFIX = "cdi.k8s.io/"


def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def check_vendor_or_class(name: str, what: str) -> None:
    if not name:
        raise errors.InvalidArgument(f"invalid {what}: empty name")
    if not (name[0].isascii() and name[0].isalpha()):
        raise errors.InvalidArgument(f"invalid {what} {name!r}: should start with a letter")
    if any(not (_alnum(c) or c in "_-.") for c in name[1:-1]):
        raise errors.InvalidArgument(f"invalid {what} {name!r}: letters, digits, '_', '-' and '.' only")
    if not _alnum(name[-1]):
        raise errors.InvalidArgument(f"invalid {what} {name!r}: should end with a letter or digit")


def check_device_name(name: str) -> None:
    if not name:
        raise errors.InvalidArgument("invalid (empty) CDI device name")
    if not _alnum(name[0]) or not _alnum(name[-1]):
        raise errors.InvalidArgument(f"invalid CDI device name {name!r}: should start and end with a letter or digit")
    if any(not (_alnum(c) or c in "_-.:") for c in name[1:-1]):
        raise errors.InvalidArgument(f"invalid CDI device name {name!r}: letters, digits, '_', '-', '.', ':' only")


def parse_kind(kind: str) -> tuple[str, str]:
    vendor, sep, cls = kind.partition("/")
    if not sep or not vendor or not cls:
        raise errors.InvalidArgument(f"invalid CDI kind {kind!r}: vendor/class expected")
    check_vendor_or_class(vendor, "vendor")
    check_vendor_or_class(cls, "class")
    return vendor, cls


def parse_qualified(device: str) -> tuple[str, str, str]:
    """(vendor, class, name) of `vendor/class=name`; InvalidArgument naming the device otherwise."""
    qualifier, sep, name = device.partition("=")
    if not sep or not qualifier or not name or device.startswith("/"):
        raise errors.InvalidArgument(f"invalid CDI device {device!r}: vendor/class=name expected")
    try:
        vendor, cls = parse_kind(qualifier)
        check_device_name(name)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"invalid CDI device {device!r}: {exc}") from None
    return vendor, cls, name


def devices_from_annotations(annotations: Mapping[str, str]) -> list[str]:
    """The devices the `cdi.k8s.io/*` annotations name, in key order (each value a comma-separated list)."""
    devices = []
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            for device in annotations[key].split(","):
                parse_qualified(device)
                devices.append(device)
    return devices
