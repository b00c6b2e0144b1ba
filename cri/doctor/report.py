"""One check's verdict, the report `crispd doctor` prints, and its exit status.

Exit status: 0 when every check passed, 1 when one failed (a pod without limits cannot start here), 2 when there
are warnings only (something pods may ask for will not work, e.g. limits on a host without cgroup controllers).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

OK = "ok"
WARN = "warn"
FAIL = "fail"
EXIT_CODES = {OK: 0, FAIL: 1, WARN: 2}
WIDTH = 116


@dataclass(frozen=True)
class Check:
    name: str  # what was checked: "cgroup v2", "overlayfs", ...
    verdict: str  # OK, WARN or FAIL
    message: str  # one line: what was found
    fix: str = ""  # what to do about it (WARN and FAIL)


def ok(name: str, message: str) -> Check:
    return Check(name, OK, message)


def warn(name: str, message: str, fix: str) -> Check:
    return Check(name, WARN, message, fix)


def fail(name: str, message: str, fix: str) -> Check:
    return Check(name, FAIL, message, fix)


def exit_code(checks: Sequence[Check]) -> int:
    verdicts = {c.verdict for c in checks}
    if FAIL in verdicts:
        return EXIT_CODES[FAIL]
    return EXIT_CODES[WARN] if WARN in verdicts else EXIT_CODES[OK]


def render(checks: Sequence[Check]) -> str:
    """`<verdict> <check>: <message>`, with `fix: ...` under a warning or failure, then the verdict line."""
    name_width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        head = f"{check.verdict:<4}  {check.name:<{name_width}}  "
        lines += textwrap.wrap(check.message, WIDTH, initial_indent=head, subsequent_indent=" " * len(head))
        if check.fix:
            indent = " " * (len(head) - 2)
            lines += textwrap.wrap(check.fix, WIDTH, initial_indent=indent + "fix: ",
                                   subsequent_indent=indent + "     ")
    code = exit_code(checks)
    failed = [c.name for c in checks if c.verdict == FAIL]
    warned = [c.name for c in checks if c.verdict == WARN]
    if code == EXIT_CODES[FAIL]:
        summary = f"pods cannot start here: {', '.join(failed)}"
    elif code == EXIT_CODES[WARN]:
        summary = f"pods start here, with warnings: {', '.join(warned)}"
    else:
        summary = "all is well: pods start here"
    lines.append(f"\n{summary} (exit status {code})")
    return "\n".join(lines) + "\n"
