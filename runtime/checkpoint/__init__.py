"""Checkpointing a running container: CRIU (`criu.py`) and the archive checkpointctl reads (`archive.py`)."""
