"""crispd's side of the shims (asyncio, runs inside crispd): `manager.py` starts them through the zygote, finds them
again after a restart and makes them go; `client.py` talks to one shim's control socket. The shim program itself
(stdlib only, one per container) is the `shim` package; `shim/protocol.py` is the wire format both sides share."""
