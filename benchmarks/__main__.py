"""``python -m benchmarks``: run every benchmark section and write the results."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
