"""The VM tier's machinery without a VM: the pytest plugin's two faces (host proxies, guest reporter), settings,
module signature stripping, the image key. The tier itself (tests/vm/guest, `make test-vm`) proves the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vm import image, tier
from tests.vm.settings import VmSettings, prune
from tests.vm.wheels import build_crisp_wheel

INSTALL_WHEEL = Path(__file__).parents[1] / "vm" / "install_wheel.py"

INI = """
[pytest]
markers =
    vm: in the VM
    vm_also: here and in the VM
"""


def results(path: Path) -> dict[str, dict[str, object]]:
    return {record["nodeid"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_guest_reporter_writes_each_result_with_its_failure_and_output(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = pytester.path / "results.jsonl"
    monkeypatch.setenv("CRISP_VM_GUEST", "1")
    monkeypatch.setenv("CRISP_VM_RESULTS", str(out))
    pytester.makeini(INI)
    pytester.makepyfile(test_guest="""
        import pytest

        def test_pass():
            pass

        def test_fail():
            print("said before failing")
            assert 1 + 1 == 3

        def test_skip():
            pytest.skip("not on this kernel")

        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert False

        @pytest.fixture
        def broken():
            yield
            raise RuntimeError("teardown broke")

        def test_teardown_error(broken):
            pass
    """)
    pytester.runpytest("-p", "tests.vm.plugin").assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=1)
    got = results(out)
    assert {nodeid: record["outcome"] for nodeid, record in got.items()} == {
        "test_guest.py::test_pass": "passed",
        "test_guest.py::test_fail": "failed",
        "test_guest.py::test_skip": "skipped",
        "test_guest.py::test_xfail": "xfailed",
        "test_guest.py::test_teardown_error": "failed",
    }
    assert "assert (1 + 1) == 3" in str(got["test_guest.py::test_fail"]["text"])
    assert "said before failing" in str(got["test_guest.py::test_fail"]["text"])
    assert "not on this kernel" in str(got["test_guest.py::test_skip"]["text"])
    assert "teardown broke" in str(got["test_guest.py::test_teardown_error"]["text"])


def test_guest_reporter_bounds_each_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    out = pytester.path / "results.jsonl"
    monkeypatch.setenv("CRISP_VM_GUEST", "1")
    monkeypatch.setenv("CRISP_VM_RESULTS", str(out))
    monkeypatch.setenv("CRISP_VM_TEST_TIMEOUT", "0.5")
    pytester.makepyfile(test_slow="""
        import time

        def test_hangs():
            time.sleep(60)
    """)
    pytester.runpytest("-p", "tests.vm.plugin").assert_outcomes(failed=1)
    record = results(out)["test_slow.py::test_hangs"]
    assert record["outcome"] == "failed"
    assert "ran longer than" in str(record["text"])


def test_host_replaces_vm_tests_by_proxies(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRISP_VM_GUEST", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_mixed="""
        import os
        import pytest

        @pytest.mark.vm
        def test_in_vm():
            raise AssertionError("a vm test must not run on the host")

        @pytest.mark.vm
        @pytest.mark.skipif(True, reason="evaluated in the guest, not here")
        def test_in_vm_with_skipif():
            pass

        @pytest.mark.vm_also
        def test_both():
            pass

        def test_host():
            pass
    """)

    def collected(*args: str) -> list[str]:
        run = pytester.runpytest("-p", "tests.vm.plugin", "--collect-only", "-q", *args)
        return [line for line in run.outlines if line.startswith("test_mixed.py::")]

    assert collected() == ["test_mixed.py::test_in_vm", "test_mixed.py::test_in_vm_with_skipif",
                           "test_mixed.py::test_both", "test_mixed.py::test_host", "test_mixed.py::test_both@vm"]
    assert collected("-m", "vm") == ["test_mixed.py::test_in_vm", "test_mixed.py::test_in_vm_with_skipif",
                                     "test_mixed.py::test_both@vm"]
    assert collected("-m", "not vm") == ["test_mixed.py::test_both", "test_mixed.py::test_host"]

    # one (fake) VM run for all proxies: the seam is the whole boot, tier.run_guest_tests
    asked: list[tuple[str, list[str]]] = []

    def fake_run(nodeids: list[str], settings: VmSettings | None = None, stream: object = None,
                 guest: str = "plain") -> tier.TierRun:
        asked.append((guest, list(nodeids)))
        return tier.TierRun(vm=None, image=None, results={
            "test_mixed.py::test_in_vm": tier.GuestResult("test_mixed.py::test_in_vm", "failed",
                                                          "AssertionError: the guest said no", 0.1),
            "test_mixed.py::test_in_vm_with_skipif": tier.GuestResult(
                "test_mixed.py::test_in_vm_with_skipif", "skipped", "Skipped: evaluated in the guest", 0.0),
        }, error="the guest's pytest exited with status 1 without reporting them")

    monkeypatch.setattr(tier, "run_guest_tests", fake_run)
    run = pytester.runpytest("-p", "tests.vm.plugin", "-m", "vm", "-rs")
    if os.geteuid() != 0:
        run.assert_outcomes(skipped=3)
        return
    run.assert_outcomes(failed=2, skipped=1)
    assert asked == [("plain", ["test_mixed.py::test_in_vm", "test_mixed.py::test_in_vm_with_skipif",
                                "test_mixed.py::test_both"])]
    text = run.stdout.str()
    assert "AssertionError: the guest said no" in text
    assert "in the VM: evaluated in the guest" in text
    assert "no result from the plain guest for test_mixed.py::test_both" in text


def test_settings_from_the_environment() -> None:
    settings = VmSettings.from_env({"CRISP_VM_CACHE": "/tmp/crisp-x", "CRISP_VM_CPUS": "4", "CRISP_VM_MEM": "3G",
                                    "CRISP_VM_ACCEL": "tcg", "CRISP_VM_KEEP": "1"})
    assert (settings.cache_dir, settings.cpus, settings.memory, settings.accel, settings.keep_run_dir) == (
        Path("/tmp/crisp-x"), 4, "3G", "tcg", True)
    assert VmSettings.from_env({}).cache_dir == Path("/var/cache/crisp-vm")
    with pytest.raises(ValueError, match="CRISP_VM_ACCEL"):
        VmSettings.from_env({"CRISP_VM_ACCEL": "hvf"})


def test_module_signature_is_stripped() -> None:
    module = b"\x7fELF" + b"m" * 100
    signature = b"s" * 300
    info = bytes(8) + len(signature).to_bytes(4, "big")
    signed = module + signature + info + image.MODULE_SIGNATURE_MAGIC
    assert image._strip_module_signature(signed) == module
    assert image._strip_module_signature(module) == module


def test_image_key_follows_its_inputs(tmp_path: Path) -> None:
    settings = VmSettings.from_env({"CRISP_VM_CACHE": str(tmp_path)})
    wheels = tmp_path / "wheels" / "0123456789abcdef"
    same = image.image_key(settings, wheels)
    assert image.image_key(VmSettings.from_env({"CRISP_VM_CACHE": str(tmp_path / "other")}), wheels) == same
    assert image.image_key(settings, wheels.with_name("fedcba9876543210")) != same
    mirrored = VmSettings.from_env({"CRISP_VM_CACHE": str(tmp_path), "CRISP_VM_MIRROR": "http://mirror.example/d"})
    assert image.image_key(mirrored, wheels) != same


def test_tier_reads_results_cut_short_by_a_dying_vm(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    whole = {"nodeid": "t.py::a", "outcome": "passed", "text": "", "seconds": 0.5}
    path.write_text(json.dumps(whole) + "\n" + '{"nodeid": "t.py::b", "outco')
    assert list(tier._results(path)) == ["t.py::a"]
    (tmp_path / "timings").write_text("job-start 2.5\ncrisp-installed 8.0\nbroken\n")
    assert tier._guest_timings(tmp_path / "timings") == {"guest:job-start": 2.5, "guest:crisp-installed": 8.0}


def test_install_wheel_installs_crisp_with_its_console_scripts(tmp_path: Path) -> None:
    """What the guest does at every boot, here into a fresh venv (crisp's wheel built as for the guest)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = build_crisp_wheel(tmp_path / "wheel")
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), str(INSTALL_WHEEL), str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for script in ("crispd", "crisp-shim"):
        assert f"installed {venv / 'bin' / script}" in done.stdout
        assert os.access(venv / "bin" / script, os.X_OK)
    assert (venv / "bin" / "crispd").read_text().splitlines()[:3] == [
        f"#!{python}", "import sys", "from cri.daemon import main"]
    version = subprocess.run([str(python), "-c", "import runtime.version, runtime; print(runtime.__file__)"],
                             capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert version.startswith(str(venv))


def test_prune_keeps_the_new_entry_and_the_recently_used(tmp_path: Path) -> None:
    now = time.time()
    ages = {"new": 0, "a": 1, "b": 2, "c": 3, "d": 4, "stale": 8 * 86400, "unmarked": None}
    for name, age in ages.items():
        (tmp_path / name).mkdir()
        if age is not None:
            (tmp_path / name / "last-used").touch()
            os.utime(tmp_path / name / "last-used", (now - age, now - age))
    prune(tmp_path, keep=tmp_path / "new", keep_others=3, days=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "new"]
