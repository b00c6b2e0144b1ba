"""What the A/B benchmarks share (remove_container.py, image_lifecycle.py): the busybox image on a loopback
registry, one crispd per side (this checkout, and `--compare DIR`'s `.venv/bin/crispd`), each on its own root,
socket, cgroup base and bridge and run as deployed (no asyncio debug mode), its teardown, and the figures' line."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from tests.cri.pods import Pods
from tests.imagetools import busybox_image
from tests.leaks import mounts_under
from tests.registrytools import Pusher, running_registry


def summary(label: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{label:<44} median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   (n={len(ms)})"


@contextlib.contextmanager
def busybox_registry(base: Path) -> Iterator[str]:
    """A registry under `base` serving the busybox image: its reference."""
    with running_registry(base / "registry") as reg:
        Pusher(reg.url).image("bench/busybox", busybox_image(), "latest")
        yield f"{reg.host}/bench/busybox:latest"


class Side:
    """One crispd (`program`: another checkout's crispd, None for this one's) with its dir `base`."""

    def __init__(self, label: str, base: Path, ref: str, program: list[str] | None) -> None:
        self.label = label
        self.base = base
        self.ref = ref
        base.mkdir()
        self.pods = Pods(base, debug=False)
        self.pods.daemon.program = program
        self.pods.daemon.config_path.write_text(self.pods.config_text('[metrics]\naddress = ""\n'))

    def stop(self) -> None:
        """Its pods removed, crispd stopped, and whatever it left on the host gone."""
        try:
            if self.pods.daemon.proc is not None and self.pods.daemon.proc.poll() is None:
                self.pods.remove_all_pods()
        finally:
            self.pods.daemon.stop()
            for m in reversed(mounts_under(self.base)):
                subprocess.run(["umount", "-l", m], check=False)
            self.pods.cleanup_host()


S = TypeVar("S", bound=Side)


def sides(kind: type[S], base: Path, ref: str, compare: Path | None) -> list[S]:
    """This checkout's side, and `compare`'s if given."""
    made = [kind("this checkout", base / "a", ref, None)]
    if compare:
        made.append(kind(str(compare), base / "b", ref, [str(compare / ".venv/bin/crispd")]))
    return made


@contextlib.contextmanager
def running_sides(kind: type[S], compare: Path | None) -> Iterator[list[S]]:
    """`sides` in a temporary dir with the busybox registry; each side stopped at the end (`Side.stop`), also when
    the benchmark fails. Starting them is the benchmark's."""
    with tempfile.TemporaryDirectory(prefix="crisp-bench-") as tmp, busybox_registry(Path(tmp)) as ref:
        made = sides(kind, Path(tmp), ref, compare)
        try:
            yield made
        finally:
            for side in made:
                side.stop()
