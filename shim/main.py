"""crisp-shim: the per-container monitor (built by the shim issue; for now it only reports its version)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runtime.version import VERSION


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["--version"], ["version"]):
        print(f"crisp-shim {VERSION}")
        return 0
    print(f"crisp-shim {VERSION}: unknown arguments {args!r}; the shim itself is not implemented yet",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
