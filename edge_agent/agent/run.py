"""``edge-agent run``: the agent in a process, with its signals.

Apart from :class:`~edge_agent.agent.core.Agent` because signals belong to the process, not to
the agent: tests and the demo run agents in one event loop without them.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from edge_agent.agent.core import Agent
from edge_agent.config import EX_CONFIG, AgentConfig, Secrets, resolve_secrets
from edge_agent.store import StoreUnusable


async def run_agent(
    config: AgentConfig,
    *,
    secrets: Secrets | None = None,
    config_path: Path | None = None,
    **options: Any,
) -> int:
    """Run the agent with signal handling (SIGTERM/SIGINT stop, SIGHUP reload); exit status."""
    agent = Agent(
        config,
        secrets if secrets is not None else resolve_secrets(config),
        config_path=config_path,
        **options,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        return await agent.run()
    except StoreUnusable as exc:
        # A damaged or too-new database: a restart cannot fix it, so the exit code is the one
        # the systemd unit does not restart on (RestartPreventExitStatus=78), with one line.
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
