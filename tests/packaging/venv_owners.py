"""Which installed distributions own crisp's top-level names (cri, shim, runtime) in a venv.

crisp's packages have short, common names; it is supported only in a venv of its own (/opt/crisp/venv, .venv),
where no other distribution may bring a module or package of the same name. Run with the venv's interpreter
(`python venv_owners.py`): prints JSON {name: [distribution, ...]}. Stdlib only.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata

CRISP_TOP_LEVEL = ("cri", "shim", "runtime")


def top_level_names(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installs (its files, else its top_level.txt)."""
    names: set[str] = set()
    for file in dist.files or []:
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] == "..":
            continue
        if len(parts) == 1:
            if parts[0].endswith(".py") or ".cpython-" in parts[0] or parts[0].endswith(".so"):
                names.add(parts[0].split(".", 1)[0])
        else:
            names.add(parts[0])
    text = dist.read_text("top_level.txt")
    if text:
        names.update(line.strip() for line in text.splitlines() if line.strip())
    return names


def owners() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in CRISP_TOP_LEVEL}
    for dist in metadata.distributions():
        owned = top_level_names(dist) & set(CRISP_TOP_LEVEL)
        for name in owned:
            found[name].append(dist.metadata["Name"])
    return {name: sorted(set(dists)) for name, dists in found.items()}


if __name__ == "__main__":
    json.dump(owners(), sys.stdout)
    sys.stdout.write("\n")
