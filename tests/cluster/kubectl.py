"""kubectl, inside the cluster tier's node, with kubeadm's admin kubeconfig: every check of the tier goes through it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.cluster.controlplane import ADMIN_KUBECONFIG
from tests.cluster.namespaces import Node

Object = dict[str, Any]


class KubectlError(AssertionError):
    pass


class Kubectl:
    def __init__(self, node: Node, binary: Path, namespace: str = "default") -> None:
        self.node = node
        self.binary = binary
        self.namespace = namespace

    def command(self, *args: str) -> list[str]:
        return [*self.node.enter(), str(self.binary), f"--kubeconfig={ADMIN_KUBECONFIG}",
                f"--namespace={self.namespace}", *args]

    def run(self, *args: str, input: str | bytes | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        data = input.encode() if isinstance(input, str) else input
        done = subprocess.run(self.command(*args), input=data, capture_output=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {done.returncode}\n"
                               f"{done.stderr.decode(errors='replace')[-3000:]}")
        return done

    def text(self, *args: str, **kwargs: Any) -> str:
        return self.run(*args, **kwargs).stdout.decode(errors="replace")

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """A kubectl that keeps running (logs -f, port-forward, attach): the caller ends it."""
        return subprocess.Popen(self.command(*args), close_fds=True, start_new_session=True, **kwargs)

    def get(self, *args: str) -> Object:
        found: Object = json.loads(self.run("get", *args, "--output=json").stdout)
        return found

    def items(self, kind: str, *selectors: str) -> list[Object]:
        items: list[Object] = self.get(kind, *selectors)["items"]
        return items

    def apply(self, *objects: Object) -> None:
        self.run("apply", "--filename=-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": list(objects)}))
