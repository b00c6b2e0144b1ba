"""hugetlb controller: hugetlb.<size>.max (and .rsvd.max where the kernel has it) per OCI hugepageLimits entry.

The kubelet sends a limit for every huge page size the node has, 0 for the sizes a pod did not ask for; such a 0
is tolerated where the controller (or that page size) is missing: there is nothing to forbid then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runtime import errors
from runtime.cgroups.resources import Setting, integer

CONTROLLER = "hugetlb"

_PAGE_SIZE = re.compile(r"^\d+[KMG]B$")


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    limits = resources.get("hugepageLimits") or []
    if not isinstance(limits, list):
        raise errors.InvalidArgument("linux.resources.hugepageLimits must be a list")
    out = []
    for entry in limits:
        if not isinstance(entry, Mapping):
            raise errors.InvalidArgument(f"linux.resources.hugepageLimits: bad entry {entry!r}")
        size = entry.get("pageSize")
        if not isinstance(size, str) or not _PAGE_SIZE.match(size):
            raise errors.InvalidArgument(f"linux.resources.hugepageLimits: bad pageSize {size!r} (like 2MB, 1GB)")
        limit = integer(entry, "limit", "hugepageLimits")
        if limit < 0:
            raise errors.InvalidArgument(f"linux.resources.hugepageLimits.{size}: negative limit {limit}")
        key = (f"hugepageLimits.{size}",)
        zero = limit == 0
        out.append(Setting(key, CONTROLLER, f"hugetlb.{size}.max", str(limit), optional=zero, tolerated=zero))
        out.append(Setting(key, CONTROLLER, f"hugetlb.{size}.rsvd.max", str(limit), optional=True, tolerated=zero))
    return out
