"""Pressure stall information: cpu.pressure, memory.pressure, io.pressure (present with PSI, any controller)."""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups import fs
from runtime.cgroups.stats import Pressure, PsiLine


def parse_pressure(text: str) -> Pressure:
    lines: dict[str, PsiLine] = {}
    for kind, fields in fs.parse_nested_keyed(text).items():
        try:
            lines[kind] = PsiLine(
                avg10=float(fields["avg10"]),
                avg60=float(fields["avg60"]),
                avg300=float(fields["avg300"]),
                total=int(fields["total"]),
            )
        except (KeyError, ValueError):
            continue
    return Pressure(some=lines.get("some"), full=lines.get("full"))


def read_pressure(cgroup_dir: Path, resource: str) -> Pressure | None:
    """`resource` is cpu, memory or io; None when the file is missing (no PSI) or unreadable (PSI disabled)."""
    try:
        text = fs.read(cgroup_dir / f"{resource}.pressure")
    except OSError:  # EOPNOTSUPP when PSI is compiled in but switched off (psi=0)
        return None
    return None if text is None else parse_pressure(text)
