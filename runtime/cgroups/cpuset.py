"""cpuset controller: cpuset.cpus and cpuset.mems (CRI cpuset_cpus / cpuset_mems; empty means unset)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runtime import errors
from runtime.cgroups.resources import Setting, section, string

CONTROLLER = "cpuset"

_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    cpu = section(resources, "cpu")
    out = []
    for key, file in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
        value = string(cpu, key, "cpu").strip()
        if not value:
            continue
        if not _LIST.match(value):
            raise errors.InvalidArgument(f"linux.resources.cpu.{key}: {value!r} is not a list like 0-3,5")
        out.append(Setting((f"cpu.{key}",), CONTROLLER, file, value))
    return out
