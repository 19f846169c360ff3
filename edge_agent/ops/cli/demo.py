"""``edge-agent demo``: hand the arguments to the demo's own parser."""

from __future__ import annotations

import argparse
import importlib


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported by name: the demo pulls in the simulator, which `run` never needs.
    demo = importlib.import_module("edge_agent.ops.demo")
    rest = list(args.demo_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return int(demo.main(rest))
