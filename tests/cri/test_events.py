"""GetContainerEvents over the real socket: the events of a full pod and container lifecycle, in order, to every
subscriber, with the pod's and containers' statuses; a subscriber that never reads is dropped and delays nobody."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri import api as cri
from tests.cri.crispd import Crispd
from tests.cri.pods import Pods, running_pods
from tests.cri.test_containers import Kubelet
from tests.leaks import wait_until

if TYPE_CHECKING:
    from tests.cri.conftest import TestImages

pytestmark = pytest.mark.root

# the subscribers' buffer in this test's crispd: at least the events one RPC sends in a burst (RemovePodSandbox of
# the 10 fillers: 11, a few milliseconds apart), so that the subscribers that read (this test's threads, ~3 MB
# events) keep up, and far fewer than the events the stuck one misses
BUFFER = 12
CREATED, STARTED, STOPPED, DELETED = (cri.CONTAINER_CREATED_EVENT, cri.CONTAINER_STARTED_EVENT,
                                      cri.CONTAINER_STOPPED_EVENT, cri.CONTAINER_DELETED_EVENT)


@pytest.fixture
def kubelet(tmp_path: Path, test_images: TestImages) -> Iterator[Kubelet]:
    with running_pods(tmp_path, f"[events]\nsubscriber_buffer = {BUFFER}\n") as pods:
        yield Kubelet(pods, test_images, tmp_path / "logs")


def metric(daemon: Crispd, name: str, labels: dict[str, str] | None = None) -> float | None:
    text = urllib.request.urlopen(daemon.metrics_url(), timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(sample.labels.get(k) == v for k, v in labels.items())):
                return float(sample.value)
    return None


class Subscriber:
    """Reads a GetContainerEvents stream in a thread, keeping every event and how the stream ended."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stream = cri_runtime(channel).GetContainerEvents(cri.GetEventsRequest())
        self.events: list[cri.ContainerEventResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc

    def seen(self) -> list[tuple[str, int]]:
        return [(e.container_id, e.container_event_type) for e in self.events]


def cri_runtime(channel: grpc.Channel) -> object:

    return cri.RuntimeServiceStub(channel)


def test_events_of_a_full_lifecycle(kubelet: Kubelet) -> None:
    daemon = kubelet.pods.daemon
    # each subscriber on a channel of its own: one that never reads must not hold up the others' connection
    # (grpc shares one connection among channels to the same target unless each has a subchannel pool of its
    # own), and the one that never reads keeps its first 64 KiB windows: grpc's bandwidth probe (BDP) would have
    # its transport take ~8 MB unread, on some runs more than every event of this test
    own = ("grpc.use_local_subchannel_pool", 1)
    channels = [grpc.insecure_channel(f"unix:{daemon.socket}", options=options)
                for options in ([own], [own], [own, ("grpc.http2.bdp_probe", 0)])]
    try:
        readers = [Subscriber(channels[0]), Subscriber(channels[1])]
        stuck = cri_runtime(channels[2]).GetContainerEvents(cri.GetEventsRequest())  # never read
        assert wait_until(lambda: metric(daemon, "crisp_container_event_subscribers") == 3, 20)

        pod_id, pod = kubelet.pod("events")
        # big annotations make every event large (each carries every container's status): the stuck subscriber's
        # transport buffers (a few MB) fill up, then its queue
        annotations = {f"note{i}": "x" * 65000 for i in range(4)}  # within the 256 KiB a container may have
        first = kubelet.run(pod_id, pod, "first", ["sleep", "1000"], annotations=annotations)
        kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=first, timeout=0))
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=first))
        # enough events for the stuck subscriber to fall behind by more than its buffer
        others = []
        for i in range(10):
            cid = kubelet.create(pod_id, pod, f"filler{i}", ["true"], annotations=annotations)
            others.append(cid)
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

        expected = [(pod_id, CREATED), (pod_id, STARTED),
                    (first, CREATED), (first, STARTED), (first, STOPPED), (first, DELETED),
                    *[(cid, CREATED) for cid in others],
                    (pod_id, STOPPED), *[(cid, DELETED) for cid in others], (pod_id, DELETED)]
        for reader in readers:
            assert wait_until(lambda r=reader: len(r.events) >= len(expected), 30), reader.seen()
            assert reader.seen() == expected
            assert reader.error is None

        # the stuck one was dropped (and only it); reading it now gives what got through, then the end
        assert metric(daemon, "crisp_container_event_subscribers_dropped_total") == 1
        assert metric(daemon, "crisp_container_event_subscribers") == 2
        got = []
        with pytest.raises(grpc.RpcError) as ended:
            for event in stuck:
                got.append((event.container_id, event.container_event_type))
        assert ended.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert got == expected[:len(got)] and len(got) < len(expected)

        statuses = readers[0].events
        # every event carries the pod's status and all of its containers' statuses at that moment
        started = statuses[3]
        assert started.pod_sandbox_status.id == pod_id
        assert started.pod_sandbox_status.state == cri.SANDBOX_READY
        assert started.pod_sandbox_status.metadata.name == "events"
        assert [(c.id, c.state) for c in started.containers_statuses] == [(first, cri.CONTAINER_RUNNING)]
        stopped = statuses[4]
        assert [(c.id, c.state) for c in stopped.containers_statuses] == [(first, cri.CONTAINER_EXITED)]
        assert stopped.containers_statuses[0].exit_code == 137
        assert statuses[5].containers_statuses == []  # deleted: gone from the pod
        pod_stopped = statuses[6 + len(others)]
        assert pod_stopped.pod_sandbox_status.state == cri.SANDBOX_NOTREADY
        assert {c.id for c in pod_stopped.containers_statuses} == set(others)
        pod_deleted = statuses[-1]
        assert pod_deleted.pod_sandbox_status.id == pod_id and pod_deleted.containers_statuses == []
        times = [e.created_at for e in statuses]
        assert times == sorted(times) and times[0] > 0
    finally:
        for channel in channels:
            channel.close()
    for reader in readers:
        reader.thread.join(10)


def test_event_streams_end_when_crispd_stops(pods: Pods) -> None:
    with grpc.insecure_channel(f"unix:{pods.daemon.socket}") as channel:
        reader = Subscriber(channel)
        assert wait_until(lambda: metric(pods.daemon, "crisp_container_event_subscribers") == 1, 20)
        pods.daemon.stop()
        reader.thread.join(30)
        assert not reader.thread.is_alive()
        assert reader.error is not None and reader.error.code() is grpc.StatusCode.UNAVAILABLE
    pods.daemon.start()  # the fixture cleans up through it
