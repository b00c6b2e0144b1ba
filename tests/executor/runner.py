"""Run one container to completion the way the shim does: as a child subreaper, create + start, wait for the init.

    python -m tests.executor.runner RUNTIME_ARGV_JSON ID BUNDLE OUT_FILE ERR_FILE
prints one JSON line: {"create": rc, "create_err": "...", "exit": code or null}; the container is deleted after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from runtime.linux import syscalls as sc


def main() -> int:
    runtime, cid, bundle, out_path, err_path = json.loads(sys.argv[1]), *sys.argv[2:6]
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    pid_file = os.path.join(os.path.dirname(out_path), f"{cid}.pid")
    result: dict[str, object] = {"exit": None}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        create = subprocess.run([*runtime, "create", "--bundle", bundle, "--pid-file", pid_file, cid],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    result["create"] = create.returncode
    if create.returncode == 0:
        pid = int(open(pid_file).read())
        started = time.monotonic()
        start = subprocess.run([*runtime, "start", cid], capture_output=True, text=True)
        result["start"] = start.returncode
        result["start_err"] = start.stderr
        while True:
            reaped, status = os.waitpid(-1, 0)
            if reaped == pid:
                result["exit"] = os.waitstatus_to_exitcode(status)
                result["seconds"] = time.monotonic() - started
                break
    delete = subprocess.run([*runtime, "delete", "--force", cid], capture_output=True, text=True)
    result["delete"] = delete.returncode
    result["delete_err"] = delete.stderr
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
