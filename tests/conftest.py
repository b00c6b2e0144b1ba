"""Shared by every test directory: the VM tier's plugin decides where tests marked `vm` run (tests/vm/plugin.py)."""

pytest_plugins = ["tests.vm.plugin"]
