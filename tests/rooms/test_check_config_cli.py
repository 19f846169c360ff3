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


@pytest.mark.parametrize("key_type", ["RSA", "ECDSA"])
async def test_certificate_credential(receiver, tmp_path, key_type) -> None:
    import trustme

    kind = trustme.KeyType[key_type]
    leaf = trustme.CA(key_type=kind).issue_cert("edge-agent.contoso.com", key_type=kind)
    cert_pem = leaf.cert_chain_pems[0].bytes()
    (tmp_path / "graph-cert.pem").write_bytes(cert_pem)
    (tmp_path / "graph-key.pem").write_bytes(leaf.private_key_pem.bytes())
    sim = GraphSim(GraphSimConfig(rooms=1, client_secret=None, client_certificates=[cert_pem]))
    await sim.start()
    try:
        cfg = write_config(tmp_path, sim, receiver)
        text = cfg.read_text().replace(
            'client_secret_file = "graph-secret"',
            'certificate_file = "graph-cert.pem"\nkey_file = "graph-key.pem"',
        )
        cfg.write_text(text)
        code, out = await check(cfg)
    finally:
        await sim.stop()
    assert "PRIVATE KEY" not in out and "Traceback" not in out
    if key_type == "RSA":
        assert code == 0, out
        assert "certificate accepted" in out and "1 room(s)" in out
    else:
        assert code == 1, out
        assert "credential" in out and "needs an RSA key" in out
