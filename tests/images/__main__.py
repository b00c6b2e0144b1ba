"""python -m tests.images build   build the test image set (or find it cached) and print where it is
python -m tests.images serve   serve it on loopback until interrupted, printing the crispd config to use"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.images import build, serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "serve"])
    args = parser.parse_args()
    started = time.monotonic()
    images = build()
    print(f"images: {len(images.refs)} references in {images.dir} ({time.monotonic() - started:.1f}s)")
    if args.command == "serve":
        with tempfile.TemporaryDirectory(prefix="crisp-images-") as tmp, serve(Path(tmp), images) as served:
            print(f"images: registry on {served.registry}; crispd config:\n{served.crisp_config}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
