"""Workloads that end: a Job runs to completion; a pod with restartPolicy OnFailure fails twice, is restarted in
place by the kubelet (its emptyDir kept), and then succeeds."""

from __future__ import annotations

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import GRACE, container, container_status, pod


def test_a_job_runs_to_completion(cluster: Cluster) -> None:
    kubectl = cluster.kubectl
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", "terminationGracePeriodSeconds": GRACE,
               "containers": [container("work", cluster.busybox, ["sh", "-c", "echo job done on $(hostname)"])]}}}}
    kubectl.apply(job)
    kubectl.run("wait", "job/once", "--for=condition=Complete", "--timeout=120s", timeout=150)
    status = kubectl.get("job", "once")["status"]
    assert status["succeeded"] == 1 and status.get("failed", 0) == 0, status
    (worker,) = kubectl.items("pods", "--selector=job-name=once")
    assert worker["status"]["phase"] == "Succeeded"
    assert container_status(worker, "work")["state"]["terminated"]["exitCode"] == 0
    assert kubectl.text("logs", "job/once") == f"job done on {worker['metadata']['name']}\n"
    kubectl.run("delete", "job", "once", "--cascade=foreground", "--timeout=60s", timeout=90)


COUNTING = "n=$(( $(cat /state/n 2>/dev/null || echo 0) + 1 )); echo $n > /state/n; echo attempt $n; [ $n -ge 3 ]"


def test_on_failure_restarts_a_failing_container_until_it_succeeds(cluster: Cluster) -> None:
    kubectl = cluster.kubectl
    kubectl.apply(pod("third-time", [container("try", cluster.busybox, ["sh", "-c", COUNTING],
                                               volumeMounts=[{"name": "state", "mountPath": "/state"}])],
                      restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]))
    kubectl.run("wait", "pod/third-time", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s", timeout=150)
    status = container_status(kubectl.get("pod", "third-time"), "try")
    assert status["restartCount"] == 2
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["lastState"]["terminated"]["exitCode"] == 1
    # (the kubelet removes the dead container before the last once the pod is done: --previous is for a running
    # pod, test_logs.py)
    assert kubectl.text("logs", "third-time") == "attempt 3\n"
    kubectl.run("delete", "pod", "third-time", "--wait=true", "--timeout=60s", timeout=90)
