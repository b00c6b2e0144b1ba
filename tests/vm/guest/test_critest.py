"""critest's controller-dependent specs (tests/conformance/expected.toml's `vm = true` entries) against a crispd in
the pure cgroup v2 guest, where every controller exists: each must pass. One crispd and one loopback registry serve
the module; each spec is one critest run focused on exactly it (so that each stays within the guest's per-test
timeout and reports on its own).

The guest has no network and no tool cache: the host's VM tier (tests/vm/tier.py) puts critest and the built image
set into the io share (`inputs/`) when this file's tests are selected."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance import critest
from tests.cri.pods import Pods, running_pods
from tests.images import ImageSet, serve

INPUTS = Path("/run/crisp-vm/io/inputs")
EXPECTED = critest.load_expectations()
VM_SPECS = sorted(name for name, entry in EXPECTED.items() if entry.vm)


@dataclass(frozen=True)
class Node:
    pods: Pods
    critest: Path
    workdir: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    missing = INPUTS / "missing"
    if missing.exists():
        pytest.fail(f"the host could not provide critest's inputs: {missing.read_text()}", pytrace=False)
    base = tmp_path_factory.mktemp("critest")
    (base / "crisp").mkdir()
    with serve(base / "images", ImageSet.load(INPUTS / "images")) as served, \
            running_pods(base / "crisp", served.crisp_config, start_timeout=120, check_slow_callbacks=False) as pods:
        yield Node(pods, INPUTS / "critest", base)


def spec_id(name: str) -> str:
    return "-".join(name.lower().replace("[conformance]", "").split()[-6:])


@pytest.mark.parametrize("name", VM_SPECS, ids=spec_id)
def test_spec_passes_with_every_controller(node: Node, name: str,
                                           record_property: Callable[[str, object], None]) -> None:
    workdir = node.workdir / f"spec{VM_SPECS.index(name)}"
    report = critest.run(node.critest, f"unix://{node.pods.daemon.socket}", workdir, focus=[name], timeout=200)
    record_property("summary", f"{report.counts()} in {report.seconds:.0f}s (in the VM: {name})")
    found = critest.problems(report, EXPECTED, vm=True, focus=[name])
    log = "\n".join(report.output.read_text(errors="replace").splitlines()[-60:])
    assert not found, "\n".join(found) + f"\ncritest's output (end):\n{log}"
