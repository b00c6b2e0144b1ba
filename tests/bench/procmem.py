"""A process's memory as /proc tells it, for the figures scripts of tests/bench."""

from __future__ import annotations


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB figures: Rss, Pss, and USS = Private_Clean + Private_Dirty."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": values["Rss"], "pss": values["Pss"], "uss": values["Private_Clean"] + values["Private_Dirty"]}
