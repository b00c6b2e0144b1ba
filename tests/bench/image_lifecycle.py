"""Figures, not a test: critest's image_lifecycle benchmark order (PullImage, ImageStatus, RemoveImage of one
image, again and again) through a real crispd over its socket. No container uses the image, so every RemoveImage
takes the image's blobs and snapshots out of the store.

Prints the median and p95 of each call. With `--compare DIR` a second crispd runs from the checkout DIR (its
`.venv/bin/crispd`, e.g. /work/main) on its own root, socket and bridge, and the cycles alternate between the two, so
both see the same load on the host. Both run as deployed (no asyncio debug mode).
Run as root from the repository: .venv/bin/python tests/bench/image_lifecycle.py [--runs 20] [--compare DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.bench import ab

CALLS = ("PullImage", "ImageStatus", "RemoveImage")


class Side(ab.Side):
    """One crispd; `cycle` times one pull, status and removal of the image."""

    def __init__(self, label: str, base: Path, ref: str, program: list[str] | None) -> None:
        super().__init__(label, base, ref, program)
        self.times: dict[str, list[float]] = {call: [] for call in CALLS}

    def cycle(self) -> None:
        images = self.pods.daemon.images
        spec = cri.ImageSpec(image=self.ref)
        t0 = time.perf_counter()
        images.PullImage(cri.PullImageRequest(image=spec), timeout=60)
        t1 = time.perf_counter()
        assert images.ImageStatus(cri.ImageStatusRequest(image=spec)).image.id
        t2 = time.perf_counter()
        images.RemoveImage(cri.RemoveImageRequest(image=spec))
        t3 = time.perf_counter()
        for call, seconds in zip(CALLS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.times[call].append(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--compare", type=Path, help="another checkout whose .venv/bin/crispd runs side by side")
    args = parser.parse_args()
    with ab.running_sides(Side, args.compare) as sides:
        for side in sides:
            side.pods.daemon.start()
            side.cycle()  # warm-up, not counted
            for times in side.times.values():
                times.clear()
        for i in range(args.runs):
            for side in sides if i % 2 == 0 else sides[::-1]:
                side.cycle()
    for side in sides:
        print(side.label)
        for call in CALLS:
            print("  " + ab.summary(call, side.times[call]))


if __name__ == "__main__":
    main()
