"""kubectl logs through the API server and the kubelet from crisp's log files: the previous container's log, a log
followed as it grows, timestamps."""

from __future__ import annotations

import datetime
import os
import select
import subprocess
import time

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, container_status, is_ready, pod
from tests.kubelet.support import wait_until

# the first run fails after one line; every later run counts lines, five a second
TALKER = ("n=$(( $(cat /state/n 2>/dev/null || echo 0) + 1 )); echo $n > /state/n; "
          "if [ $n -eq 1 ]; then echo first run; exit 1; fi; "
          "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done")


def read_lines(proc: subprocess.Popen[bytes], until: int, timeout: float) -> list[str]:
    """Lines of a running process's stdout, as they come, until there are `until` of them."""
    assert proc.stdout is not None
    data, deadline = b"", time.monotonic() + timeout
    while data.count(b"\n") < until:
        left = deadline - time.monotonic()
        assert left > 0, f"not {until} lines within {timeout}s: {data[-500:]!r}"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the stream ended: {data[-500:]!r}"
            data += chunk
    return data.decode().splitlines()[:until]


def test_logs_previous_follow_and_timestamps(cluster: Cluster) -> None:
    kubectl = cluster.kubectl
    kubectl.apply(pod("talker", [container("talk", cluster.busybox, ["sh", "-c", TALKER],
                                           volumeMounts=[{"name": "state", "mountPath": "/state"}])],
                      volumes=[{"name": "state", "emptyDir": {}}]))

    def restarted_once() -> bool:
        found = kubectl.get("pod", "talker")
        return is_ready(found) and container_status(found, "talk")["restartCount"] == 1

    wait_until(restarted_once, 120, "talker running again after one failure")
    assert kubectl.text("logs", "talker", "--previous") == "first run\n"

    follow = kubectl.popen("logs", "talker", "--follow", "--tail=1", stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    try:
        lines = read_lines(follow, 6, 30)
    finally:
        follow.kill()
        follow.wait()
    numbers = [int(line.removeprefix("line ")) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + 6)), lines  # the tail, then each new line in order

    stamped = kubectl.text("logs", "talker", "--timestamps", "--tail=3").splitlines()
    assert len(stamped) == 3, stamped
    now = datetime.datetime.now(datetime.UTC)
    times = []
    for line in stamped:
        stamp, text = line.split(" ", 1)
        times.append(datetime.datetime.fromisoformat(stamp))  # RFC 3339 with nanoseconds and Z
        assert text.startswith("line "), line
    assert times == sorted(times) and now - datetime.timedelta(seconds=60) < times[0] <= now, times
    kubectl.run("delete", "pod", "talker", "--wait=true", "--timeout=60s", timeout=90)
