"""Probes and restarts as the kubelet runs them on crisp: HTTP probes against a web server in the pod, exec probes
(crisp's ExecSync), a liveness failure that makes the kubelet restart a container, and a crash loop."""

from __future__ import annotations

from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, container_status, is_ready, pod_manifest, wait_pod, wait_until


def test_web_pod_becomes_ready_and_a_second_container_reaches_it_over_localhost(node: Node,
                                                                                static_pod: StaticPod) -> None:
    web = node.web
    probe = {"httpGet": {"path": "/", "port": web.port}, "periodSeconds": 1}
    fetch = f"wget -q -O- http://127.0.0.1:{web.port}/"
    name = static_pod(pod_manifest("web", [
        container("server", web.image, web.command, readinessProbe=probe,
                  livenessProbe={**probe, "initialDelaySeconds": 1}),
        # ready only once it has fetched the page over the pod's loopback
        container("client", node.busybox,
                  ["sh", "-c", f"while true; do {fetch} > /tmp/page && cat /tmp/page; sleep 1; done"],
                  readinessProbe={"exec": {"command": ["test", "-s", "/tmp/page"]}, "periodSeconds": 1}),
    ]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready")
    assert pod["status"]["podIP"]
    for ctr in ("server", "client"):
        status = container_status(pod, ctr)
        assert status["ready"] and status["started"] and status["restartCount"] == 0, status
        assert "running" in status["state"], status
    wait_until(lambda: web.page.encode() in node.kubelet.logs(name, "client"), 10, "the page in the client's log")


def test_exec_probes_and_a_failing_liveness_probe_restarts_the_container(node: Node, static_pod: StaticPod) -> None:
    # ready once /tmp/ready exists; alive while /tmp/alive exists, which the container removes after a while
    script = "touch /tmp/alive; sleep 2; touch /tmp/ready; sleep 4; rm /tmp/alive; exec sleep 1000"
    name = static_pod(pod_manifest("probed", [container(
        "app", node.busybox, ["sh", "-c", script],
        readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
        livenessProbe={"exec": {"command": ["test", "-e", "/tmp/alive"]}, "periodSeconds": 1,
                       "failureThreshold": 2})]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Ready through its exec probe")
    assert container_status(pod, "app")["restartCount"] == 0
    pod = wait_pod(node.kubelet, name, lambda p: container_status(p, "app").get("restartCount", 0) >= 1, 60,
                   "restarted after its liveness probe failed")
    status = container_status(pod, "app")
    assert "terminated" in status["lastState"], status
    last = status["lastState"]["terminated"]
    # killed by the kubelet (SIGTERM to sleep as PID 1 ... then SIGKILL after the grace period)
    assert last["exitCode"] in (137, 143), last
    # the restarted container runs the script again: ready again, then killed again
    pod = wait_pod(node.kubelet, name, lambda p: is_ready(p) and container_status(p, "app")["restartCount"] >= 1,
                   60, "Ready again after the restart")


def test_a_crash_looping_container_is_restarted_with_its_exit_code(node: Node, static_pod: StaticPod) -> None:
    # the termination message goes to the file the kubelet mounts at /dev/termination-log (terminationMessagePath).
    # Each attempt lives 2 s, because of what the kubelet's status says between attempts: once the newest attempt
    # died, its status names the attempt before it as the last terminated one (the one `logs --previous` reads),
    # and the kubelet's container deletor removes exactly that attempt as the newest one dies; CrashLoopBackOff
    # (and the newest dead attempt as the last terminated) shows only from the sync at the back-off's end until
    # the next PLEG relist. An attempt that died at once left both checks a window of one relist, often missed.
    name = static_pod(pod_manifest("crashing", [container(
        "app", node.busybox, ["sh", "-c", "echo crashing; echo last words > /dev/termination-log; sleep 2; exit 3"])]))
    pod = wait_pod(node.kubelet, name, lambda p: container_status(p, "app").get("restartCount", 0) >= 2, 90,
                   "restarted twice")
    status = container_status(pod, "app")
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error", status
    assert terminated["message"] == "last words\n", status
    # while the third attempt runs, the previous one is the second, which the kubelet keeps
    wait_until(lambda: b"crashing" in node.kubelet.logs(name, "app", previous="true"), 60, "the previous attempt's log")
    # the third attempt dies, the back-off (40 s) ends: CrashLoopBackOff for a moment, polled closely
    wait_pod(node.kubelet, name,
             lambda p: container_status(p, "app")["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff",
             90, "in CrashLoopBackOff", interval=0.05)
