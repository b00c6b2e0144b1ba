"""crisp's built-in OCI runtime (`crisp-executor`): the library is here, the command line in main.py."""
