"""A crispd stand-in for the crash tests: a shim manager in its own process that can be SIGKILLed.

argv[1]: the containers dir; argv[2]: a JSON list of shim configs. It creates and starts each container, prints one
JSON line with the init pids and the zygote's pid, and then idles until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cri.shims.manager import ShimManager
from shim.protocol import ShimConfig


async def main(containers: Path, configs: list[ShimConfig]) -> None:
    manager = ShimManager(containers, call_timeout=60)
    await manager.start()
    pids = {}
    for config in configs:
        client, pid = await manager.create(config)
        await client.start()
        pids[config.id] = pid
    print(json.dumps({"pids": pids, "zygote": manager.zygote_pid}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), [ShimConfig.from_json(c) for c in json.loads(sys.argv[2])]))
