"""critest's whole validation suite against a crispd on a temporary root and socket, pulling the test images from
loopback (tests/images), judged against expected.toml (tests/conformance/critest.py). crispd has NRI enabled and
critest gets `--nri-socket`: its NRI specs (critest's own Go plugin stub, NRI v0.12.2) run and must pass."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import tools
from tests.conformance import critest
from tests.cri.nri_support import nri_config
from tests.cri.pods import running_pods
from tests.images import serve
from tests.leaks import shm_segments

pytestmark = pytest.mark.root

HOST_IPC_SEGMENT = 1048576
# critest processes at once (the Serial specs then alone), as critest's -parallel does: crispd serves concurrent
# clients, and the specs' waits overlap
PARALLEL = 2


def run_suite(tmp_path: Path, record_property: Callable[[str, object], None], handler: str = "") -> None:
    binary = tools.tool("critest")
    expected = critest.load_expectations()
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is missing: `make test` installs it", pytrace=False)
    # crispd's dirs where a user-namespaced pod's host uid can walk to them, as /run and /var/lib are on a node
    # (runc prepares such a pod's rootfs as its root); pytest's tmp dirs are private to root
    base = Path(tempfile.mkdtemp(prefix="crisp-critest-"))
    base.chmod(0o711)
    shm_before = shm_segments(HOST_IPC_SEGMENT)
    nri_dir = Path(tempfile.mkdtemp(prefix="crisp-nri-"))  # short: a unix socket path has 107 bytes
    try:
        # crispd's loop blocking is tests/cri's to judge (its fixture checks every daemon); over minutes of critest on
        # a shared 2-core host, scheduling delays alone make callbacks slow: counted in the summary, not judged
        with serve(tmp_path / "images") as served, \
                running_pods(base, served.crisp_config + nri_config(nri_dir),
                             check_slow_callbacks=False) as pods:
            report = critest.run(binary, f"unix://{pods.daemon.socket}", tmp_path / "critest", handler=handler,
                                 parallel=PARALLEL, nri_socket=str(nri_dir / "nri.sock"))
            record_property("summary", f"{report.counts()} in {report.seconds:.0f}s ({handler or 'built-in executor'};"
                                       f" crispd logged {len(pods.daemon.slow_callbacks())} slow callbacks)")
            found = critest.problems(report, expected)
            # judged before crispd stops: then running_pods checks that the pods critest removed left nothing
            assert not found, (f"{report.counts()}; {len(found)} specs not as expected.toml says (critest's output: "
                               f"{report.output}):\n" + "\n".join(found))
    finally:
        # the HostIpc specs make a segment in the host's IPC namespace (ipcmk -M 1048576) and never remove it
        for segment in shm_segments(HOST_IPC_SEGMENT) - shm_before:
            subprocess.run(["ipcrm", "-m", str(segment)], check=False, capture_output=True)
        shutil.rmtree(nri_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def test_critest_builtin_executor(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    run_suite(tmp_path, record_property)


def test_critest_runc(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """The same suite with every pod on the runc handler (it fits the tier's budget: make test runs it too).
    crun is not run: these hosts' capability bounding set withholds CAP_SYS_RESOURCE, and crun 1.8.1 refuses to
    load its device filter when it cannot raise RLIMIT_MEMLOCK (every unprivileged container fails to create)."""
    run_suite(tmp_path, record_property, handler="runc")
