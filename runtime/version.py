"""crisp's version, shared by crispd and crisp-shim."""

RUNTIME_NAME = "crisp"
VERSION = "0.1.0"
