"""``edge-agent check-config --connect`` against the Graph simulator: token, permissions, rooms."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from calendar_sim.graph import GraphSim, GraphSimConfig
from tests.rooms.conftest import agent_env
from tests.rooms.test_graph_sim_cli import SIM_SECRET, write_config

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


@pytest.mark.parametrize(
    ("roles", "ok", "words"),
    [
        (("Calendars.Read", "Place.Read.All"), True, ["3 room(s): room-1 (room-1@contoso.com)"]),
        (("Calendars.Read",), False, ["Place.Read.All"]),
        (("Place.Read.All",), False, ["Calendars.Read", "application access policy"]),
    ],
)
async def test_check_config_connect(receiver, tmp_path, roles, ok, words) -> None:
    sim = GraphSim(GraphSimConfig(rooms=3, client_secret=SIM_SECRET, roles=roles))
    await sim.start()
    try:
        code, out = await check(write_config(tmp_path, sim, receiver))
    finally:
        await sim.stop()
    assert (code == 0) is ok, out
    assert "token" in out and "client secret accepted" in out
    for w in words:
        assert w in out, out
    assert SIM_SECRET not in out


async def test_check_config_connect_wrong_secret(receiver, tmp_path) -> None:
    sim = GraphSim(GraphSimConfig(rooms=1, client_secret="another-secret"))
    await sim.start()
    try:
        code, out = await check(write_config(tmp_path, sim, receiver))
    finally:
        await sim.stop()
    assert code == 1, out
    assert "refused the client credentials" in out and SIM_SECRET not in out
