"""Stats parsing against fixture cgroup directories: `full` has every controller (files as a 6.x kernel writes
them), `old` has what a host without controllers and with an older PSI has. Real files: tests/integration."""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups import Cgroup, PsiLine
from runtime.cgroups.io import parse_io_stat
from runtime.cgroups.pressure import parse_pressure

FIXTURES = Path(__file__).parent / "fixtures"


def test_every_controller() -> None:
    stats = Cgroup(FIXTURES, "/full").stats()
    assert stats.cpu is not None
    assert (stats.cpu.usage_usec, stats.cpu.user_usec, stats.cpu.system_usec) == (2914387, 2001001, 913386)
    assert (stats.cpu.nr_periods, stats.cpu.nr_throttled, stats.cpu.throttled_usec) == (1520, 43, 812034)
    assert stats.cpu.raw["nr_bursts"] == 0
    mem = stats.memory
    assert mem is not None
    assert (mem.current, mem.peak, mem.limit, mem.swap_current) == (52428800, 67108864, 104857600, 0)
    assert (mem.anon, mem.file, mem.inactive_file, mem.active_file) == (31457280, 18874368, 12582912, 6291456)
    assert (mem.pgfault, mem.pgmajfault) == (18324, 12)
    assert mem.working_set == 52428800 - 12582912
    assert (mem.oom, mem.oom_kill) == (2, 1)
    assert mem.events["max"] == 17
    assert len(mem.stat) == 53
    assert stats.pids is not None and (stats.pids.current, stats.pids.limit) == (12, None)
    assert stats.io is not None
    assert stats.io.devices["8:0"]["wbytes"] == 314773504
    assert stats.io.total("rbytes") == 1459200 + 90112
    assert stats.io.total("rios") == 214
    assert stats.cpu_pressure is not None
    assert stats.cpu_pressure.some == PsiLine(avg10=1.53, avg60=0.87, avg300=0.20, total=4172632)
    assert stats.cpu_pressure.full == PsiLine(avg10=0.0, avg60=0.0, avg300=0.0, total=0)
    assert stats.memory_pressure is not None and stats.memory_pressure.full is not None
    assert stats.memory_pressure.full.total == 101207
    assert stats.io_pressure is not None and stats.io_pressure.some is not None
    assert stats.io_pressure.some.total == 37211


def test_absent_files_are_absent_values_never_zeros() -> None:
    stats = Cgroup(FIXTURES, "/old").stats()
    assert stats.cpu is not None
    assert (stats.cpu.usage_usec, stats.cpu.user_usec, stats.cpu.system_usec) == (100, 60, 40)
    assert (stats.cpu.nr_periods, stats.cpu.nr_throttled, stats.cpu.throttled_usec) == (None, None, None)
    assert stats.memory is None
    assert stats.pids is None
    assert stats.io is None
    assert stats.cpu_pressure is not None
    assert stats.cpu_pressure.some == PsiLine(avg10=0.5, avg60=0.25, avg300=0.1, total=999)
    assert stats.cpu_pressure.full is None  # older kernels have no "full" line for cpu
    assert stats.memory_pressure is None and stats.io_pressure is None


def test_working_set_needs_both_numbers_and_is_never_negative() -> None:
    from runtime.cgroups import MemoryStats

    assert MemoryStats(current=10, stat={}).working_set is None
    assert MemoryStats(current=10, stat={"inactive_file": 25}).working_set == 0
    assert MemoryStats().oom_kill is None


def test_parsers_skip_what_they_cannot_read() -> None:
    assert parse_pressure("some avg10=x avg60=0 avg300=0 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n") \
        .full == PsiLine(0.0, 0.0, 0.0, 7)
    assert parse_pressure("").some is None
    assert parse_io_stat("8:0 rbytes=1 wbytes=2 strange=x\n\n").devices == {"8:0": {"rbytes": 1, "wbytes": 2}}
