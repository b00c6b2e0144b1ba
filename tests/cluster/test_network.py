"""Pod IPs on crisp's built-in bridge (no kube-proxy, no CNI plugin): a pod's server answers the node (the host of
the pods) and another pod at its pod IP."""

from __future__ import annotations

import ipaddress

import urllib3

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, is_ready, pod


def test_pod_ips_reach_the_node_and_each_other(cluster: Cluster) -> None:
    kubectl = cluster.kubectl
    kubectl.apply(pod("net-server", [container("nginx", cluster.nginx, None, ports=[{"containerPort": 80}])]),
                  pod("net-client", [container("client", cluster.busybox, ["sleep", "100000"])]))
    kubectl.run("wait", "pod/net-server", "pod/net-client", "--for=condition=Ready", "--timeout=120s")
    server, client = kubectl.get("pod", "net-server"), kubectl.get("pod", "net-client")
    assert is_ready(server) and is_ready(client)
    addresses = [ipaddress.ip_address(p["status"]["podIP"]) for p in (server, client)]
    assert addresses[0] != addresses[1]
    assert all(a in cluster.crisp.subnet for a in addresses), (addresses, cluster.crisp.subnet)
    assert [p["status"]["podIPs"] for p in (server, client)] == [[{"ip": str(a)}] for a in addresses]

    with cluster.node.network():  # the node's network namespace: where the kubelet, crispd and the bridge are
        response = urllib3.PoolManager().request("GET", f"http://{addresses[0]}/", timeout=10, retries=False)
    assert response.status == 200 and b"Welcome to nginx!" in response.data

    page = kubectl.text("exec", "net-client", "--", "wget", "-q", "-O", "-", f"http://{addresses[0]}/")
    assert "Welcome to nginx!" in page
    # and the server saw the client's pod IP (no masquerade between pods): nginx logs to stdout
    log = kubectl.text("logs", "net-server").splitlines()
    assert any(line.startswith(f"{addresses[1]} ") and '"GET / ' in line for line in log), log
    kubectl.run("delete", "pod", "net-server", "net-client", "--wait=true", "--timeout=60s", timeout=90)
