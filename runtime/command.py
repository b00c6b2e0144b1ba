"""Short-lived helper programs (mount, umount, unshare, setsid, CNI plugins, an executor's delete), run to their end.

They are started from a worker thread, never from the event loop: starting a process copies the page tables of a
big caller (crispd), which on a loaded machine takes tens of milliseconds, and the loop must not be held for that.
Nothing here forks crispd in the loop's thread, and no process started here outlives the call (except what a
program itself detaches, like `setsid -f`).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime import errors


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    def message(self) -> str:
        """What the program said about a failure (stderr, else stdout, else its exit status)."""
        text = (self.stderr.strip() or self.stdout.strip()).decode(errors="replace")
        return text or f"exit status {self.returncode}"


async def run_command(argv: Sequence[str], *, kill_after: float, what: str, input: bytes | None = None,
                      env: Mapping[str, str] | None = None, cwd: str | None = None,
                      pass_fds: Sequence[int] = (), output_fd: int | None = None) -> CommandResult:
    """Run argv to completion in a worker thread; DEADLINE_EXCEEDED (the program killed) after `kill_after` s.

    With `output_fd` its stdout and stderr go there instead of being captured: for programs that leave a detached
    process behind (`setsid -f`), which would otherwise hold the capture pipes open.
    """

    def run() -> CommandResult:
        out: int = subprocess.PIPE if output_fd is None else output_fd
        try:
            done = subprocess.run(
                list(argv), input=input, stdin=None if input is not None else subprocess.DEVNULL,
                stdout=out, stderr=out, timeout=kill_after, close_fds=True, pass_fds=tuple(pass_fds),
                env=dict(env) if env is not None else None, cwd=cwd, check=False)
        except subprocess.TimeoutExpired:
            raise errors.DeadlineExceeded(f"{what}: {argv[0]} did not finish within {kill_after:g}s") from None
        except FileNotFoundError:
            raise errors.FailedPrecondition(f"{what}: {argv[0]} is not installed") from None
        return CommandResult(done.returncode, done.stdout or b"", done.stderr or b"")

    return await asyncio.to_thread(run)
