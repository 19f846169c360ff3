"""``edge-agent check-config --connect`` against the Google simulator: the key, the delegation,
both scopes, the rooms; a refused delegation names the Admin console page and the client ID."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from calendar_sim.google import GoogleSim, GoogleSimConfig
from tests.rooms.conftest import agent_env
from tests.rooms.google_helpers import write_config

pytestmark = pytest.mark.slow


async def check(cfg: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent",
        "check-config",
        "-c",
        str(cfg),
        "--connect",
        env=agent_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("delegated", [True, False])
async def test_google_check_config_connect(receiver, tmp_path, delegated: bool) -> None:
    sim = GoogleSim(GoogleSimConfig(rooms=3, delegate=delegated))
    await sim.start()
    try:
        cfg = write_config(tmp_path, sim, receiver)
        code, out = await check(cfg)
        client_id = sim.key_file()["client_id"]
        pem = sim.key_file()["private_key"]
    finally:
        await sim.stop()
    assert "google rooms: 0 listed, 0 linked + the directory's" in out, out
    assert "key" in out and sim.identity.account.client_email in out
    assert "PRIVATE KEY" not in out and pem.splitlines()[2] not in out
    if delegated:
        assert code == 0, out
        assert "a token as admin@example.com" in out
        assert "3 room(s): room-1 (room-1@example.com)" in out
        assert "room-1@example.com: 0 event(s) in the next 24 h" in out
    else:
        assert code != 0, out
        flat = " ".join(out.split())
        assert "Domain-wide delegation" in flat, out
        assert "calendar.readonly" in flat and "admin.directory.resource.calendar.readonly" in flat
        assert f"client ID {client_id}" in flat, out


READ_ONLY = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/admin.directory.resource.calendar.readonly",
)
WRITE = "https://www.googleapis.com/auth/calendar"


@pytest.mark.parametrize(
    ("bookable", "delegated"),
    [(False, READ_ONLY), (True, READ_ONLY), (True, (*READ_ONLY, WRITE))],
    ids=["no-booking-read-only", "booking-read-only", "booking-write"],
)
async def test_google_check_config_names_the_scopes_for_what_is_configured(
    receiver, tmp_path, bookable: bool, delegated: tuple[str, ...]
) -> None:
    """Read-only scopes when nothing can book a calendar-only room; with [api] tokens (the
    booking route) the write scope too, checked by a token asking for it as booking does."""
    sim = GoogleSim(GoogleSimConfig(rooms=2, delegated_scopes=delegated))
    await sim.start()
    try:
        (tmp_path / "api-token").write_text("t" * 32 + "\n")
        api = f'token_file = "{tmp_path / "api-token"}"' if bookable else ""
        code, out = await check(write_config(tmp_path, sim, receiver, api=api))
        client_id = sim.key_file()["client_id"]
    finally:
        await sim.stop()
    flat = " ".join(out.split())
    assert "a token as admin@example.com" in flat, out  # the read scopes are delegated
    row = next(line for line in out.splitlines() if "booking (write scope)" in line)
    if not bookable:
        assert code == 0, out
        assert " ok " in row and "read-only scopes are all the site must delegate" in flat, out
    elif WRITE in delegated:
        assert code == 0, out
        assert " ok " in row and f"a token with {WRITE} as admin@example.com" in flat, out
        assert "POST /v1/rooms/{room}/bookings" in flat
    else:
        assert code == 0, out  # a warning: polling runs, booking answers 503
        assert " WARN " in row, out
        assert "rooms can be booked through POST /v1/rooms/{room}/bookings" in flat, out
        # The Admin console step names every scope the agent will ask for, the write one too.
        assert f"add client ID {client_id} with the scopes {','.join((*READ_ONLY, WRITE))}" in flat
