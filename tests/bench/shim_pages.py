"""Figures: which of the zygote's pages a new shim copies, and what on them it wrote.

A shim is a fork of the zygote (shim/zygote.py): its pages stay shared with the zygote until one side writes to
them, and each page the shim writes becomes its own (its Private_Dirty, most of its PSS). This script finds those
pages and what was written on them:

- a zygote-like process imports what the zygote imports, freezes the collector as it does and forks a shim
  (`become_shim`, no container: the shim's own start-up and idle loop);
- after `--wait` seconds the page frames of both processes are compared (/proc/<pid>/pagemap): a page present in
  both at the same address under different frames was copied;
- the zygote-like process then lists its objects' address ranges (gc's objects and what they refer to), and each
  8-byte word that differs between the two copies of a page is put down to the object that holds it: its
  reference count, its gc header, or another field (a code object's fields are its warm-up counter and its
  adaptive bytecode, which CPython 3.11 rewrites as it runs). Words in no listed object are the allocator's and
  the objects' separate tables (dict keys, list items).

Run as root from the repository: `.venv/bin/python -m tests.bench.shim_pages [--wait 1]`. Prints figures; asserts
nothing. Everything it makes (a temporary bundle dir, the two processes) is gone when it ends.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.procmem import smaps_rollup

PAGE = 4096
Range = tuple[int, int, str]
ObjectRange = tuple[int, int, str, str]  # start, size, type name, what it is (module, qualname)


def writable_ranges(pid: int, names: tuple[str, ...] = ("[anon]", "[heap]")) -> list[Range]:
    ranges = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        name = parts[5] if len(parts) > 5 else "[anon]"
        if "w" in parts[1] and name in names:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi, name))
    return ranges


def frames(pid: int, ranges: list[Range]) -> dict[int, tuple[int, str]]:
    """Address -> (page frame, mapping name) of each present page."""
    found = {}
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for lo, hi, name in ranges:
            f.seek(lo // PAGE * 8)
            data = f.read((hi - lo) // PAGE * 8)
            for i in range(len(data) // 8):
                (entry,) = struct.unpack_from("<Q", data, i * 8)
                if entry >> 63:
                    found[lo + i * PAGE] = (entry & ((1 << 55) - 1), name)
    return found


def read_pages(pid: int, addresses: list[int]) -> dict[int, bytes]:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        pages = {}
        for address in addresses:
            f.seek(address)
            pages[address] = f.read(PAGE)
        return pages


def _describe(obj: object) -> str:
    if type(obj).__name__ == "function":
        return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"
    if type(obj).__name__ == "code":
        return f"{os.path.basename(obj.co_filename)}:{obj.co_name}"  # type: ignore[attr-defined]
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if type(obj).__name__ == "module":
        return str(getattr(obj, "__name__", ""))
    return ""


def object_ranges() -> list[ObjectRange]:
    """This process's objects: gc's, and the untracked ones they refer to (strings, numbers, bytes)."""
    gc.unfreeze()
    seen: set[int] = set()
    ranges: list[ObjectRange] = []

    def add(obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        tracked = gc.is_tracked(obj)
        # sys.getsizeof counts a tracked object's gc header, which sits just before it
        ranges.append((id(obj) - 16 if tracked else id(obj), sys.getsizeof(obj), type(obj).__name__, _describe(obj)))

    for obj in gc.get_objects():
        add(obj)
        for ref in gc.get_referents(obj):
            if not gc.is_tracked(ref):
                add(ref)
    return sorted(ranges)


def zygote_like(bundle: str, go_fd: int, ready_fd: int) -> None:
    """The zygote's start (its imports, libc opened, SIGCHLD ignored, the collector frozen), one shim forked; once
    `go_fd` is readable, its objects are written to <bundle>/objects.json and the shim is killed."""
    from runtime.linux import syscalls
    from shim import zygote

    syscalls.preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    config = {"id": "pages", "bundle": bundle, "executor": ["crisp-executor"], "executor_root": f"{bundle}/r",
              "resident": 1}
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        zygote.shim.main.become_shim(config, ready_fd)
    os.write(1, f"{pid}\n".encode())
    os.read(go_fd, 1)
    try:
        Path(bundle, "objects.json").write_text(json.dumps(object_ranges()))
        os.write(1, b"listed\n")
    finally:
        os.kill(pid, signal.SIGKILL)


def attribute(copied: list[int], parent: dict[int, bytes], child: dict[int, bytes],
              objects: list[ObjectRange]) -> tuple[collections.Counter[tuple[str, str]], collections.Counter[str],
                                                   collections.Counter[tuple[str, str, str]]]:
    """Per copied page, what changed on it: (type, refcount | gc header | field) -> pages; also words per
    (type, what, kind) for code objects, functions and types."""
    starts = [o[0] for o in objects]
    pages: collections.Counter[tuple[str, str]] = collections.Counter()
    words: collections.Counter[str] = collections.Counter()
    detail: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for address in copied:
        before, after = parent[address], child[address]
        causes = set()
        for offset in range(0, PAGE, 8):
            if before[offset:offset + 8] == after[offset:offset + 8]:
                continue
            word = address + offset
            i = bisect.bisect_right(starts, word) - 1
            hit = None
            for j in range(i, max(i - 64, -1), -1):  # a tracked object starts 16 bytes before its id
                start, size, kind, what = objects[j]
                if start <= word < start + size:
                    hit = (kind, what, word - start)
                    break
            if hit is None:
                causes.add(("(allocator, tables)", ""))
                words["(allocator, tables)"] += 1
                continue
            kind, what, at = hit
            part = "refcount" if at in (0, 16) else "gc header" if at < 16 else "field"
            causes.add((kind, part))
            words[kind] += 1
            if kind in ("code", "function", "type"):
                detail[(kind, what.split(":")[0], part)] += 1
        for cause in causes:
            pages[cause] += 1
    return pages, words, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait", type=float, default=1.0, help="seconds the shim runs before its pages are read")
    if sys.argv[1:2] == ["--zygote-like"]:
        zygote_like(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    args = parser.parse_args()
    bundle = tempfile.mkdtemp(prefix="crisp-pages-", dir="/tmp")  # short: the shim's socket lives in it
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.shim_pages", "--zygote-like", bundle, str(go_r),
                             str(ready_w)], pass_fds=(go_r, ready_w), stdout=subprocess.PIPE)
    os.close(go_r)
    os.close(ready_w)
    try:
        assert proc.stdout is not None
        shim_pid = int(proc.stdout.readline())
        report = json.loads(os.read(ready_r, 65536).partition(b"\n")[0])
        if not report.get("ok"):
            raise SystemExit(f"the shim failed: {report}")
        time.sleep(args.wait)
        ranges = writable_ranges(proc.pid)
        parent, child = frames(proc.pid, ranges), frames(shim_pid, ranges)
        copied = sorted(a for a in child if a in parent and parent[a][0] != child[a][0])
        by_mapping = collections.Counter(child[a][1] for a in copied)
        before, after = read_pages(proc.pid, copied), read_pages(shim_pid, copied)
        memory = smaps_rollup(shim_pid)
        os.write(go_w, b"x")
        proc.stdout.readline()
        objects = [tuple(o) for o in json.loads(Path(bundle, "objects.json").read_text())]
        pages, words, detail = attribute(copied, before, after, objects)  # type: ignore[arg-type]
    finally:
        os.close(go_w)
        proc.wait(30)
        shutil.rmtree(bundle, ignore_errors=True)
    print(f"idle shim (no container), {args.wait:g} s after its fork: PSS {memory['pss']} kB, "
          f"USS (its private pages) {memory['uss']} kB")
    print(f"zygote pages it copied (heap and anonymous mappings): {len(copied)} = {len(copied) * 4} kB "
          f"({', '.join(f'{n} {name}' for name, n in by_mapping.most_common())})")
    print("pages on which the shim changed ... (a page may count under several):")
    for (kind, part), n in pages.most_common(12):
        print(f"  {n:5d} pages  {kind} {part}".rstrip())
    print("changed 8-byte words by the object holding them:")
    print("  " + ", ".join(f"{kind} {n}" for kind, n in words.most_common(12)))
    print("code objects, functions and types with the most changed words (module, what changed):")
    for (kind, what, part), n in detail.most_common(15):
        print(f"  {n:5d} words  {kind} {what} ({part})")


if __name__ == "__main__":
    main()
