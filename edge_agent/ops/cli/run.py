"""``edge-agent run``: run the agent until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_INTERRUPTED,
    err,
    load_config_or_exit,
    secrets_or_exit,
    setup_logging,
)


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args)
    cfg = load_config_or_exit(args.config, require_sink=True)
    secrets = secrets_or_exit(args.config, cfg)
    setup_logging(args, cfg)
    from edge_agent.agent import run_agent
    from edge_agent.ops.gctune import tune_gc
    from edge_agent.ops.heap import tune_malloc
    from edge_agent.store import StoreError

    tune_malloc()  # once, before the agent's threads: see edge_agent/ops/heap.py
    tune_gc()  # after the imports: see edge_agent/ops/gctune.py

    try:
        return int(asyncio.run(run_agent(cfg, secrets=secrets, config_path=args.config.resolve())))
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except StoreError as exc:  # cannot open the store: locked by another agent, unreadable...
        err(f"edge-agent: {exc}")
        return EX_FAIL
