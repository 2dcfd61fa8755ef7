"""``python -m dpopkit``: the same as the ``dpopkit`` command."""

from __future__ import annotations

import sys

from dpopkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
