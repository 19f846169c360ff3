"""Rooms end to end: ``edge-agent run -c FILE`` in a subprocess, against the HTTPS Graph fake
(``tests/calendars/graphfake.py``) with a CA made here, and a real webhook receiver.

The agent runs on the wall clock, so every event is placed at whole days from today's UTC
midnight (the rooms' zone is UTC): inside ``[midnight today, +7 days)`` at any hour of the run,
and the verdicts never depend on when the suite runs.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from tests.calendars.graphfake import FakeGraph, Seen
from tests.e2e.conftest import make_fleet  # noqa: F401 - the device simulator fixture
from tests.e2e.harness import SECRET
from tests.receivers import WebhookReceiver

CLIENT_SECRET = "s3cret"  # what the fake's token endpoint accepts


class TimedGraph(FakeGraph):
    """The fake, with the arrival time of each request (to check a Retry-After was waited)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(ctx)
        self.arrived: list[tuple[float, Seen]] = []

    async def _record(self, request: web.Request) -> Seen:
        seen = await super()._record(request)
        self.arrived.append((time.monotonic(), seen))
        return seen

    def delta_requests(self, mailbox: str) -> list[Seen]:
        return [s for s in self.requests if f"/users/{mailbox}/calendarView/delta" in s.path]


def day_at(days: int, hour: int, minute: int = 0) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` at ``days`` after today's UTC midnight (wall clock: the agent's)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight + timedelta(days=days, hours=hour, minutes=minute)).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )


def place(mailbox: str, name: str | None = None) -> dict[str, Any]:
    return {
        "id": f"place-{mailbox}",
        "displayName": name or mailbox.split("@")[0],
        "emailAddress": mailbox,
    }


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def graph(ca: trustme.CA) -> AsyncIterator[TimedGraph]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    g = TimedGraph(ctx)
    await g.start()
    yield g
    await g.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()


def rooms_config(
    tmp_path: Path,
    graph: FakeGraph,
    receiver: WebhookReceiver,
    ca_file: Path,
    *,
    extra: str = "",
    microsoft: str = "",
) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""site = "rooms"
[store]
path = "{tmp_path / "agent.db"}"
[webhook]
url = "{receiver.url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:0"
[microsoft]
tenant_id = "{graph.tenant}"
client_id = "app-1"
client_secret_env = "GRAPH_SECRET"
authority_url = "{graph.authority_url}"
graph_url = "{graph.graph_url}"
ca_file = "{ca_file}"
poll_interval_s = 1
{microsoft}
{extra}
"""
    )
    return cfg


def agent_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(
        {
            "WEBHOOK_SECRET": SECRET,
            "GRAPH_SECRET": CLIENT_SECRET,
            "EDGE_AGENT_LOG_LEVEL": "info",
        }
    )
    env.update(more)
    return env


def _log_file(path: Path) -> Any:
    return path.open("wb")  # the child writes it; the test reads it afterwards (logs())


@pytest.fixture
async def spawn(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(cfg: Path, **env: str) -> asyncio.subprocess.Process:
        log = _log_file(tmp_path / f"agent-{len(procs)}.log")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            "-c",
            str(cfg),
            env=agent_env(**env),
            stdout=log,
            stderr=log,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.returncode is None:
            p.terminate()
            try:
                await asyncio.wait_for(p.wait(), 15)
            except TimeoutError:
                p.kill()
                await p.wait()


def logs(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("agent-*.log")))
