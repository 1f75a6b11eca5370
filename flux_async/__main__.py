"""``python -m flux_async``: the same command line as ``flux-async``."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
