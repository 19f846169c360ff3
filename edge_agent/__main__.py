"""``python -m edge_agent``: the ``edge-agent`` command line."""

from __future__ import annotations

import sys

from edge_agent.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
