"""Driving the executor (crisp-executor, runc or crun) with runc's command line, and its failures in its own words.

A failure keeps the kind the executor gave it: crisp-executor's error lines in its JSON log carry the wire name of
their `runtime.errors` kind (`"kind"`), which the shim passes on as it is; runc's and crun's carry none (Internal).

crisp's own executor is resident: with `ShimConfig.resident` its code (imported by the zygote) runs each command in
a fork of the shim, with the same arguments its command line would get, never in a new interpreter.

Every command gets the bundle contract's global options (runtime.bundle.executor_argv: `--root`, `--log
<bundle>/executor.log --log-format json`, and the cgroup2 bind for an OCI runtime on a hybrid host), a timeout,
and runs without blocking the shim's loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from runtime import errors
from runtime.bundle import EXECUTOR_LOG, executor_argv
from runtime.executor import main as executor_main
from shim.loop import Loop
from shim.protocol import ShimConfig, ShimError
from shim.spawn import CommandResult, Resident, run_command

STEP_TIMEOUT = 60.0  # any one executor, mount or umount command
_COMMANDS = ("create", "start", "state", "kill", "delete", "exec", "update")

# done(result, where the executor's log ended before the command: its new lines are this command's)
Done = Callable[[CommandResult, int], None]


class Executor:
    def __init__(self, loop: Loop, config: ShimConfig) -> None:
        self.loop = loop
        self.config = config
        self.log_path = os.path.join(config.bundle, EXECUTOR_LOG)
        self.resident = Resident(executor_main.main, executor_main.PROGRAM, config.resident) \
            if config.resident else None

    def argv(self, *args: str) -> list[str]:
        return executor_argv(self.config.executor, self.config.executor_root, *args, log=self.log_path,
                             cgroup2_bind=self.config.cgroup2_bind)

    def run(self, args: list[str], done: Done, stdin: int | None = None, stdout: int | None = None,
            stderr: int | None = None, fd3: int | None = None) -> int:
        """Start an executor command (`fd3`: an fd it gets as 3); returns its pid, `done` gets its result."""
        offset = self._log_size()
        return run_command(self.loop, self.argv(*args), lambda result: done(result, offset),
                           stdin=stdin, stdout=stdout, stderr=stderr, timeout=STEP_TIMEOUT, fd3=fd3,
                           resident=self.resident)

    def error(self, result: CommandResult, log_offset: int) -> ShimError:
        """The executor's own words about a failure (the last error in its log, else its output) and its kind."""
        message, kind = "", errors.INTERNAL
        try:
            with open(self.log_path, "rb") as f:
                f.seek(log_offset)
                for line in f.read().splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        text = line.decode(errors="replace").strip()
                        if text:
                            message, kind = text, errors.INTERNAL
                        continue
                    if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                        message = str(entry.get("msg", "")) or message
                        kind = str(entry.get("kind", errors.INTERNAL))
        except OSError:
            pass
        name = os.path.basename(self.config.executor[0])
        command = next((a for a in result.argv if a in _COMMANDS), "")
        return ShimError(kind, f"{self.config.id}: {name} {command} failed ({result.describe()})"
                         + (f": {message}" if message else ""))

    def _log_size(self) -> int:
        try:
            return os.stat(self.log_path).st_size
        except OSError:
            return 0
