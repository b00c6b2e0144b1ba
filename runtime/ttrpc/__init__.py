"""ttrpc (containerd's lightweight RPC over one byte stream) for asyncio, and NRI's connection multiplexer."""
