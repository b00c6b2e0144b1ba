"""critest's NRI specs against crispd with `--nri-socket`: critest's own plugin stub (NRI v0.12.2, Go) connects to
crisp's NRI socket, and every one of the 13 NRI specs must pass (none skipped: the "lost container" specs skip
only when a runtime loses a container created during a plugin's synchronization).

Until the project's critest conformance tier runs the whole suite with `--nri-socket`, this is that tier's NRI
part; it pulls critest's images from the project's loopback registry (tests/images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tools
from tests.cri.nri_support import nri_config
from tests.cri.pods import running_pods
from tests.images import Served, serve

pytestmark = pytest.mark.root

NRI_SPECS = 13


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry (make test installs it)")
    with serve(tmp_path_factory.mktemp("images")) as s:
        yield s


def test_critest_nri_specs_pass(tmp_path: Path, served: Served) -> None:
    nri_dir = Path(tempfile.mkdtemp(prefix="crisp-nri-"))  # a unix socket path has 107 bytes
    try:
        with running_pods(tmp_path, served.crisp_config + nri_config(nri_dir),
                          cgroup_extra='missing_controller = "warn"\n') as pods:
            report = tmp_path / "critest.json"
            run = subprocess.run(
                [str(tools.tool("critest")), "--runtime-endpoint", f"unix://{pods.daemon.socket}",
                 "--nri-socket", str(nri_dir / "nri.sock"), "--ginkgo.focus", "NRI", "--ginkgo.no-color",
                 f"--ginkgo.json-report={report}"],
                capture_output=True, text=True, timeout=900)
            specs = [spec for suite in json.loads(report.read_text()) for spec in suite.get("SpecReports") or []
                     if "NRI" in " ".join(spec.get("ContainerHierarchyTexts") or [])]
            states = Counter(spec["State"] for spec in specs)
            failed = [f"{' '.join(s['ContainerHierarchyTexts'])} {s['LeafNodeText']}: "
                      f"{(s.get('Failure') or {}).get('Message', '')[:500]}" for s in specs if s["State"] != "passed"]
            assert states == {"passed": NRI_SPECS}, "\n".join(failed) + "\n" + run.stdout[-3000:]
            assert run.returncode == 0, run.stdout[-3000:]
    finally:
        shutil.rmtree(nri_dir, ignore_errors=True)
