"""crisp's version, shared by crispd and crisp-shim."""

VERSION = "0.1.0"
