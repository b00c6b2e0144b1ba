"""`crispd doctor`: why pods would not start on this node, one check at a time (cri/doctor/checks.py)."""
