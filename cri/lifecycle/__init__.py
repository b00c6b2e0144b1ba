"""What crispd does to pods and containers, behind the RPCs: the pod-sandbox controller (`pods.py`: run, stop,
remove, with one set of steps for undo and teardown), the container controller (`containers.py`: start, stop,
remove, exits, live resource updates), a container's live limits (`limits.py`, which NRI's updates use too) and
the kubelet retry rule for creations (`creations.py`). The RPC files in
cri/service validate a request, find its objects and call these."""
