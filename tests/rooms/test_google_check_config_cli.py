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
