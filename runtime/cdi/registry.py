"""The CDI devices of a node: every `*.json` and `*.yaml` spec in the spec directories, read afresh for each
resolution (they are few and small, and a DRA driver writes them just before the container is created).

Directories later in the list win over earlier ones (defaults: /etc/cdi, then /var/run/cdi): a device defined in
both is the later one's. A device defined twice within one directory is a conflict: it resolves to neither, and
asking for it is an error naming both files. A spec file that does not parse or validate is left out, and asking
for one of its devices is an error that says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import errors
from runtime.cdi import names
from runtime.cdi.spec import ContainerEdits, Device, Spec, read_spec

log = logging.getLogger(__name__)

DEFAULT_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))


@dataclass(frozen=True)
class Resolved:
    """The edits to apply for a set of devices: each spec's own edits once, then each device's, in request order."""

    devices: tuple[str, ...]
    edits: tuple[ContainerEdits, ...]
    sources: tuple[str, ...]  # what each edit came from, for error messages


@dataclass
class Registry:
    dirs: tuple[Path, ...] = DEFAULT_DIRS
    devices: dict[str, tuple[Spec, Device]] = field(default_factory=dict)
    conflicts: dict[str, list[Path]] = field(default_factory=dict)
    spec_errors: dict[Path, str] = field(default_factory=dict)

    def refresh(self) -> None:
        devices: dict[str, tuple[Spec, Device]] = {}
        priority: dict[str, int] = {}
        conflicts: dict[str, list[Path]] = {}
        self.spec_errors = {}
        for rank, directory in enumerate(self.dirs):
            for spec in self._read_dir(directory):
                for device in spec.devices.values():
                    qualified = f"{spec.kind}={device.name}"
                    if qualified in devices and priority[qualified] == rank:
                        conflicts.setdefault(qualified, [devices[qualified][0].path]).append(spec.path)
                        continue
                    devices[qualified], priority[qualified] = (spec, device), rank
                    conflicts.pop(qualified, None)
        for qualified in conflicts:
            devices.pop(qualified, None)
        self.devices, self.conflicts = devices, conflicts

    def _read_dir(self, directory: Path) -> Iterable[Spec]:
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("CDI: cannot read %s: %s", directory, exc)
            return
        for path in entries:
            if path.suffix not in (".json", ".yaml") or path.is_dir():
                continue
            try:
                yield read_spec(path)
            except errors.InvalidArgument as exc:
                self.spec_errors[path] = str(exc)
                log.warning("CDI: spec %s left out: %s", path, exc)

    def resolve(self, requested: Iterable[str]) -> Resolved:
        """The edits of the requested devices (duplicates once); InvalidArgument naming every device that does not
        resolve, and why."""
        self.refresh()
        order: list[str] = []
        for name in requested:
            names.parse_qualified(name)
            if name not in order:
                order.append(name)
        problems = [self._why_missing(d) for d in order if d not in self.devices]
        if problems:
            raise errors.InvalidArgument("unresolvable CDI devices: " + "; ".join(problems))
        edits: list[ContainerEdits] = []
        sources: list[str] = []
        seen_specs: set[Path] = set()
        for qualified in order:
            spec, device = self.devices[qualified]
            if spec.path not in seen_specs:
                seen_specs.add(spec.path)
                edits.append(spec.edits)
                sources.append(f"CDI spec {spec.path}")
            edits.append(device.edits)
            sources.append(f"CDI device {qualified}")
        return Resolved(tuple(order), tuple(edits), tuple(sources))

    def _why_missing(self, device: str) -> str:
        if device in self.conflicts:
            files = ", ".join(str(p) for p in self.conflicts[device])
            return f"{device} (defined more than once in one directory: {files})"
        broken = [f"{p}: {e}" for p, e in self.spec_errors.items()]
        reason = f"; specs left out: {' | '.join(broken)}" if broken else ""
        return f"{device} (no such device in {', '.join(str(d) for d in self.dirs)}{reason})"
