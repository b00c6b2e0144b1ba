"""Figures, not a test: pull a ~100 MB multi-layer image from Debian's docker-registry on loopback into a real crispd.

Prints the pull's throughput (compressed MB/s, wall time of PullImage) and crispd's peak RSS (VmHWM).
Run as root from the repository: .venv/bin/python tests/bench/bench_pull.py [--mb 100] [--layers 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.cri.crispd import Crispd
from tests.imagetools import Layer, busybox_layer, file, image, sha256, tar_bytes
from tests.registrytools import Pusher, running_registry


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _layer(index: int, size: int) -> Layer:
    # mostly incompressible (as binaries and compressed assets are), some text: ~the same size compressed
    random_part = os.urandom(size * 9 // 10)
    text_part = (b"crisp layer %d line\n" % index) * (size // 10 // 20)
    raw = tar_bytes([file(f"data{index}/random.bin", random_part), file(f"data{index}/text.txt", text_part)])
    return Layer(gzip.compress(raw, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip",
                 sha256(raw))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100, help="uncompressed size of the data layers")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crisp-bench-pull-") as tmp:
        work = Path(tmp)
        with running_registry(work / "registry") as reg:
            layers = [busybox_layer()] + [_layer(i, args.mb * 1024 * 1024 // args.layers) for i in range(args.layers)]
            img = image(layers)
            Pusher(reg.url).image("bench/big", img, "v1")
            compressed = sum(len(lay.blob) for lay in layers)
            print(f"image: {len(layers)} layers, {compressed / 1e6:.1f} MB compressed")
            for run in range(args.runs):
                base = work / f"crispd{run}"
                base.mkdir()
                daemon = Crispd(base).start()
                try:
                    assert daemon.proc is not None
                    rss_before = _vm_hwm_kib(daemon.proc.pid)
                    start = time.monotonic()
                    ref = daemon.images.PullImage(
                        cri.PullImageRequest(image=cri.ImageSpec(image=f"{reg.host}/bench/big:v1")), timeout=600)
                    seconds = time.monotonic() - start
                    assert ref.image_ref == img.id
                    hwm = _vm_hwm_kib(daemon.proc.pid)
                finally:
                    daemon.stop()
                print(f"run {run + 1}: pull {seconds:.2f} s, {compressed / 1e6 / seconds:.1f} MB/s; "
                      f"crispd peak RSS {hwm / 1024:.1f} MiB (before the pull {rss_before / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
