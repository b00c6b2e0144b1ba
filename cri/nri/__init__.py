"""crispd's side of NRI: its pods and containers as NRI objects, and the events of its RPCs relayed to plugins."""
