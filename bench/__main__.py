"""`python -m botpulse.bench` is the same as `botpulse bench`."""

from __future__ import annotations

import sys

from botpulse.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
