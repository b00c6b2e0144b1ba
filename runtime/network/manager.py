"""The pod network crispd talks to: CNI when the node has a CNI config, else the built-in bridge (or, `cni_only`,
CNI alone: not ready, and pods refused, until a config appears; each call reads the config dir anew).

The choice is made per pod at setup; teardown and check find the backend a pod was attached with from that
backend's own record (a CNI cache file, bridge leases), so pods keep working (and are cleaned up) when a CNI config
appears or goes away while they run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from runtime import errors
from runtime.network.bridge import BridgeBackend
from runtime.network.cni import CniBackend
from runtime.network.helper_client import HelperRunner
from runtime.network.netstats import InterfaceCounters
from runtime.network.types import NetworkBackend, NetworkResult, NetworkStatus, PodNetworkRequest

log = logging.getLogger(__name__)


class NetworkManager:
    """`NetworkBackend` that dispatches to the CNI or the bridge backend."""

    name = "auto"

    def __init__(self, *, bridge: BridgeBackend, cni: CniBackend, helper: HelperRunner, cni_only: bool = False
                 ) -> None:
        self.bridge = bridge
        self.cni = cni
        self.cni_only = cni_only
        self._helper = helper

    async def backend(self) -> NetworkBackend:
        """The backend a new pod is attached with."""
        return self.cni if self.cni_only or await self.cni.configured() else self.bridge

    async def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        backend = await self.prepare(pod)
        return await backend.setup(pod)

    async def prepare(self, pod: PodNetworkRequest) -> NetworkBackend:
        """The first half of `setup`, which needs no netns yet (RunPodSandbox runs it while the netns is made): an
        attachment left by an earlier attempt (a crash, a retried RunPodSandbox) goes, and the backend to attach
        the pod with is chosen meanwhile (reading the CNI config dir changes nothing). The second half is the
        backend's `setup`."""
        _, backend = await asyncio.gather(self.teardown(pod), self.backend())
        return backend

    async def teardown(self, pod: PodNetworkRequest) -> None:
        # each backend's attachment goes, also when the other's teardown fails: both at once (they share nothing)
        outcomes = await asyncio.gather(*(b.teardown(pod) for b in (self.cni, self.bridge)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):  # cancelled, or the process is ending
                raise failure
        if failures:
            raise failures[0]

    async def attached(self, pod: PodNetworkRequest) -> bool:
        return await self.cni.attached(pod) or await self.bridge.attached(pod)

    async def attached_sandboxes(self) -> set[str]:
        """Every sandbox with an attachment (CNI cache file or bridge leases): crispd's recovery tears down those
        whose sandbox no longer exists, with `teardown(PodNetworkRequest(sandbox_id=..., netns=""))`."""
        return await self.cni.attached_sandboxes() | await self.bridge.attached_sandboxes()

    async def check(self, pod: PodNetworkRequest) -> None:
        if await self.cni.attached(pod):
            await self.cni.check(pod)
        elif await self.bridge.attached(pod):
            await self.bridge.check(pod)
        else:
            raise errors.FailedPrecondition(f"pod {pod.sandbox_id} has no network attachment")

    async def status(self) -> NetworkStatus:
        backend = await self.backend()
        return await backend.status()

    async def interface_stats(self, netns_paths: Sequence[str], time_limit: float
                              ) -> dict[str, list[InterfaceCounters] | str]:
        """Interface counters inside each network namespace (any backend's pods): path -> counters, or a string
        saying why there are none (the namespace is gone, say). One helper request for all of them."""
        if not netns_paths:
            return {}
        reply = await self._helper.call({"op": "stats", "netns": list(netns_paths)}, time_limit=time_limit)
        out: dict[str, list[InterfaceCounters] | str] = {}
        for path, entry in dict(reply.get("namespaces", {})).items():
            if "error" in entry:
                out[path] = str(entry["error"])
            else:
                out[path] = [InterfaceCounters.from_json(i) for i in entry.get("interfaces", [])]
        return out

    def start(self) -> None:
        """Have a network helper ready before the first pod needs one (started in the background)."""
        self._helper.warm()

    async def close(self) -> None:
        """Stop the spare network helper (crispd's shutdown)."""
        await self._helper.close()
