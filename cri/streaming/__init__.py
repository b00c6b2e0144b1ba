"""crisp's streaming server: the URLs that Exec, Attach and PortForward return, and what is behind them."""
