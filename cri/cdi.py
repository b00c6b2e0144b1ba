"""CDI devices of a container: its `CDI_devices` and its `cdi.k8s.io/` annotations, resolved against the spec
dirs of `[cdi]` and injected into its OCI spec (runtime/cdi)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri import api as cri
from runtime.cdi import names
from runtime.cdi.inject import inject
from runtime.cdi.registry import DEFAULT_DIRS, Registry


@dataclass(frozen=True)
class CdiConfig:
    """Where CDI spec files are read from; a later directory wins over an earlier one."""

    spec_dirs: list[str] = field(default_factory=lambda: [str(d) for d in DEFAULT_DIRS])

    def check(self) -> list[tuple[str, str]]:
        for path in self.spec_dirs:
            if not os.path.isabs(path):
                return [("spec_dirs", f"must be absolute paths, got {path!r}")]
        return []


def requested_devices(config: cri.ContainerConfig) -> list[str]:
    """The devices a container asks for: `CDI_devices`, then those the `cdi.k8s.io/` annotations name."""
    return [d.name for d in config.CDI_devices] + names.devices_from_annotations(dict(config.annotations))


def inject_devices(config: CdiConfig, spec: dict[str, Any], devices: Iterable[str]) -> None:
    """Blocking (reads the spec dirs): run it in a worker thread. InvalidArgument names what does not resolve."""
    wanted = list(devices)
    if wanted:
        inject(spec, Registry(tuple(Path(d) for d in config.spec_dirs)).resolve(wanted))
