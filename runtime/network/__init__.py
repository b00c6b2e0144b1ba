"""Pod networking: the built-in bridge (pyroute2 + nftables, run in a helper process) and CNI plugins.

crispd uses `manager.NetworkManager` (built by `cri/network.py`); importing this package never imports pyroute2,
which only the helper program (`python -m runtime.network.helper`) loads.
"""
