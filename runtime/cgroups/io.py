"""io controller: OCI blockIO -> io.bfq.weight / io.weight and io.max; io.stat."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cgroups import fs
from runtime.cgroups.resources import Setting, integer, section
from runtime.cgroups.stats import IoStats

CONTROLLER = "io"

_THROTTLES = (
    ("throttleReadBpsDevice", "rbps"),
    ("throttleWriteBpsDevice", "wbps"),
    ("throttleReadIOPSDevice", "riops"),
    ("throttleWriteIOPSDevice", "wiops"),
)


def blkio_weight_to_io_weight(weight: int) -> int:
    """v1 blkio.weight [10..1000] -> v2 io.weight [1..10000] (runc's linear mapping); 0 stays 0."""
    if weight == 0:
        return 0
    return 1 + (weight - 10) * 9999 // 990


def _weight_settings(key: str, prefix: str, weight: int) -> Setting:
    if not 10 <= weight <= 1000:
        raise errors.InvalidArgument(f"linux.resources.{key}: weight {weight} out of range 10..1000")
    # BFQ's weight has v1's range; io.weight is for the iocost controller
    return Setting(
        (key,), CONTROLLER, "io.bfq.weight", f"{prefix}{weight}",
        fallback=("io.weight", f"{prefix}{blkio_weight_to_io_weight(weight)}"),
    )


def _device(entry: Any, where: str) -> str:
    if not isinstance(entry, Mapping):
        raise errors.InvalidArgument(f"linux.resources.blockIO.{where}: bad entry {entry!r}")
    major, minor = integer(entry, "major", f"blockIO.{where}"), integer(entry, "minor", f"blockIO.{where}")
    if major < 0 or minor < 0:
        raise errors.InvalidArgument(f"linux.resources.blockIO.{where}: bad device {major}:{minor}")
    return f"{major}:{minor}"


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    blkio = section(resources, "blockIO")
    out = []
    weight = integer(blkio, "weight", "blockIO")
    if weight:
        out.append(_weight_settings("blockIO.weight", "", weight))
    for entry in blkio.get("weightDevice") or []:
        dev = _device(entry, "weightDevice")
        dev_weight = integer(entry, "weight", "blockIO.weightDevice")
        if dev_weight:
            out.append(_weight_settings("blockIO.weightDevice", f"{dev} ", dev_weight))
    for key, name in _THROTTLES:
        for entry in blkio.get(key) or []:
            dev = _device(entry, key)
            rate = integer(entry, "rate", f"blockIO.{key}")
            out.append(Setting((f"blockIO.{key}",), CONTROLLER, "io.max", f"{dev} {name}={rate or 'max'}"))
    return out


def parse_io_stat(text: str) -> IoStats:
    devices = {}
    for dev, fields in fs.parse_nested_keyed(text).items():
        devices[dev] = {k: int(v) for k, v in fields.items() if v.isdigit()}
    return IoStats(devices=devices)


def read_stats(cgroup_dir: Path) -> IoStats | None:
    text = fs.read(cgroup_dir / "io.stat")
    return None if text is None else parse_io_stat(text)
