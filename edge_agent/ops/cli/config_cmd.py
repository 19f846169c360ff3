"""``edge-agent config example``: print the annotated example configuration.

The example ships inside the package (``edge_agent/config/agent.example.toml``), so it works
from a wheel where the repository's ``config/`` directory does not exist; the repository's copy
is the canonical one and a test keeps the two identical.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from typing import Any

from edge_agent.ops.cli.common import EX_OK

EXAMPLE_RESOURCE = ("edge_agent.config", "agent.example.toml")


def example_text() -> str:
    package, name = EXAMPLE_RESOURCE
    return files(package).joinpath(name).read_text(encoding="utf-8")


def cmd_config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_text())
    return EX_OK


def add_config_parser(sub: Any) -> None:
    """Register ``config`` and its actions on the top-level subparsers."""
    p = sub.add_parser("config", help="configuration helpers (config example)")
    actions = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    e = actions.add_parser(
        "example",
        help="print the annotated example config (edge-agent config example > agent.toml)",
    )
    e.set_defaults(func=cmd_config_example)
