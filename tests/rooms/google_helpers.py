"""Shared parts of the Google rooms tests: the simulator (``calendar_sim.google``) over HTTPS
with a record of every request, its service-account key written as a file, and the config.

The agent and the simulator both run on the wall clock; every event is placed at whole days
from today's UTC midnight (the rooms' zone is UTC), so no verdict depends on the hour.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from calendar_sim.google import GoogleSim
from tests.e2e.harness import of_type
from tests.receivers import WebhookReceiver


def at(days: int, hour: int) -> datetime:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=days, hours=hour)


class StampedGoogle:
    """The simulator with the arrival time, path and query of every request it served."""

    def __init__(self, sim: GoogleSim) -> None:
        self.sim = sim
        self.arrivals: list[tuple[float, str, dict[str, str]]] = []

        @web.middleware
        async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
            self.arrivals.append((time.monotonic(), request.path, dict(request.query)))
            return await handler(request)

        sim.api.app.middlewares.insert(0, stamp)  # before start: the app is not frozen yet

    def events(self, calendar: str) -> list[tuple[float, dict[str, str]]]:
        path = f"/calendar/v3/calendars/{calendar}/events"
        return [(t, q) for t, p, q in self.arrivals if p == path]

    def directory(self) -> list[dict[str, str]]:
        return [q for _, p, q in self.arrivals if p.endswith("/resources/calendars")]


def write_config(
    tmp_path: Path,
    sim: GoogleSim,
    receiver: WebhookReceiver,
    *,
    google: str = "poll_interval_s = 2",
    extra: str = "",
    listen: str = "127.0.0.1:0",
    api: str = "",
) -> Path:
    """``api``: more ``[api]`` lines (``token_env = ...``)."""
    ca = tmp_path / "google-sim-ca.pem"
    ca.write_bytes(sim.cert_pem)
    key = tmp_path / "sa-key.json"
    key.write_text(json.dumps(sim.key_file()))
    key.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""site = "gsim"
[store]
path = "{tmp_path / "agent.db"}"
[webhook]
url = "{receiver.url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "{listen}"
{api}
[google]
service_account_file = "{key}"
subject = "{sim.config.admin}"
directory_url = "{sim.directory_url}"
calendar_url = "{sim.calendar_url}"
ca_file = "{ca}"
time_zone = "UTC"
{google}
{extra}
"""
    )
    return cfg


def of_room(events: list[dict[str, Any]], room: str, *types: str) -> list[dict[str, Any]]:
    return [e for e in of_type(events, *types) if e["data"].get("room_id") == room]


def created(events: list[dict[str, Any]], room: str) -> Counter[str]:
    return Counter(e["data"]["booking"]["id"] for e in of_room(events, room, "booking.created"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
