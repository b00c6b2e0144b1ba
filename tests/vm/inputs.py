"""Host files that some guest tests need, put into the run's io share before the boot (the guest has no network,
no tool cache and no image cache): the tools a guest test file needs (`TOOLS`: critest, the kubelet) and the test
image set.

A guest test finds them in /run/crisp-vm/io/inputs; what the host could not provide is explained in `inputs/missing`
(the guest test fails with it), so that one missing input never stops the tier's other tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

CRITEST_TESTS = "tests/vm/guest/test_critest.py"
# the guest test files that need tools, and which
TOOLS = {CRITEST_TESTS: ("critest",), "tests/vm/guest/test_kubelet_qos.py": ("kubelet",)}


def selects(nodeid: str, path: str) -> bool:
    """Whether a node id (a test, a file or a directory) runs tests of the file `path`."""
    selected = nodeid.split("::", 1)[0].rstrip("/")
    return selected == path or path.startswith(selected + "/")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def provide(io_dir: Path, nodeids: Sequence[str]) -> None:
    needed = sorted({tool for path, names in TOOLS.items() for tool in names
                     if any(selects(nodeid, path) for nodeid in nodeids)})
    if not needed:
        return
    inputs = io_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    try:
        from tests import tools
        from tests.images import build

        for name in needed:
            binary = tools.bin_dir() / name
            if not binary.is_file():
                raise FileNotFoundError(f"{binary} is not built: run `make tools` (scripts/build-k8s-tools)")
        images = build(verbose=False)
        for name in needed:
            _link_or_copy(str(tools.bin_dir() / name), str(inputs / name))
        shutil.copytree(images.dir, inputs / "images", copy_function=_link_or_copy)
    except Exception as error:  # reported by the guest test that needs them, not by the whole tier
        (inputs / "missing").write_text(f"{type(error).__name__}: {error}\n")
