"""Booking through the agent: the e2e fixtures (simulated devices, a real receiver) plus an
agent whose local API has a token, and an HTTP client that sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_sim import DeviceFleet
from tests.e2e.conftest import ca, ca_file, env, make_fleet, receiver  # noqa: F401 - fixtures
from tests.e2e.harness import RunningAgent, agent_config, eventually, of_type, start_agent
from tests.receivers import WebhookReceiver

TOKEN = "booking-test-token-0123456789"
OLD_TOKEN = "booking-old-token-9876543210"


@pytest.fixture
async def booked(
    make_fleet: Callable[..., Awaitable[DeviceFleet]],  # noqa: F811
    receiver: WebhookReceiver,  # noqa: F811
    tmp_path: Path,
    ca_file: Path,  # noqa: F811
    env: dict[str, str],  # noqa: F811
) -> AsyncIterator[Callable[..., Awaitable[tuple[DeviceFleet, RunningAgent, httpx.AsyncClient]]]]:
    """``await booked(**fleet_options)``: a fleet, an agent with ``[api] token_env`` (two tokens:
    a rotation) whose first snapshot has arrived, and a client sending the new token."""
    started: list[tuple[RunningAgent, httpx.AsyncClient]] = []

    async def start(
        *, extra: dict[str, Any] | None = None, **fleet_options: Any
    ) -> tuple[DeviceFleet, RunningAgent, httpx.AsyncClient]:
        fleet = await make_fleet(**fleet_options)
        cfg = agent_config(
            fleet,
            tmp_path,
            webhook_url=receiver.url,
            ca_file=ca_file,
            extra={"api": {"token_env": "API_TOKEN"}, **(extra or {})},
        )
        running = await start_agent(cfg, fleet, env={**env, "API_TOKEN": f"{TOKEN} {OLD_TOKEN}"})
        assert running.agent.api is not None
        http = httpx.AsyncClient(
            base_url=running.agent.api.url,
            timeout=10,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        started.append((running, http))
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"))
        return fleet, running, http

    yield start
    for running, http in started:
        await http.aclose()
        await running.stop()
