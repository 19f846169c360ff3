"""``edge-agent trust`` against the device simulator (real TLS), as a real process: the TLS
handshake only, no credentials ever sent; pins written where each room is listed, every other
byte of those files kept; ``--check`` lists the rooms whose certificate changed."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from device_sim import DeviceFleet, SimConfig
from tests.ops.test_cli import REPO, cli_env

OTHER_FP = "ab" * 32
PASSWORD = "Trust-Adm1n-Pw-77"


async def edge_agent(*args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env({"EDGE_AGENT_DEVICE_PASSWORD": PASSWORD}), cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def fleet() -> AsyncIterator[DeviceFleet]:
    f = DeviceFleet(SimConfig(devices=3, password=PASSWORD))
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


def no_credentials_reached(fleet: DeviceFleet) -> None:
    for d in fleet.devices:
        assert d.credentials_received == 0, d.device_id
        assert d.handshakes == {}, (d.device_id, d.handshakes)  # not even an HTTP request


def write_site(tmp_path: Path, fleet: DeviceFleet) -> tuple[Path, Path, Path]:
    d = fleet.devices
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        "# HQ, managed by facilities\n"
        'site = "hq"\n'
        'devices_file = "rooms.csv"\n'
        'include = ["devices.d/*.toml"]\n'
        "[defaults]\n"
        'password_env = "EDGE_AGENT_DEVICE_PASSWORD"\n'
        "\n"
        "[[devices]]\n"
        'id = "lobby"   # by the entrance\n'
        f"url = '{d[0].url}'\n"
        "time_zone = 'Europe/Oslo'\n"
    )
    csv = tmp_path / "rooms.csv"
    # Windows line endings, quoting and a comment, as a spreadsheet leaves them.
    csv.write_bytes(
        b"# floor 4\r\n"
        b'id,"url",time_zone\r\n'
        + f'"room-4a",{d[1].url},Europe/Oslo\r\n'.encode()
        + b"room-4b,wss://127.0.0.1:1/ws,\r\n"
    )
    (tmp_path / "devices.d").mkdir()
    inc = tmp_path / "devices.d" / "lab.toml"
    inc.write_text(
        "[[devices]]\n"
        'id = "lab-1"\n'
        f'url = "{d[2].url}"\n'
        f'fingerprint = "{OTHER_FP}"  # the old certificate\n'
    )
    return cfg, csv, inc


async def test_first_install_pins_where_each_room_is_listed(
    tmp_path: Path, fleet: DeviceFleet
) -> None:
    cfg, csv, inc = write_site(tmp_path, fleet)
    before = {p: p.read_bytes() for p in (cfg, csv, inc)}
    fp = fleet.cert_sha256

    code, out, err = await edge_agent("trust", "-c", str(cfg), "--all", "--yes")
    # lab-1's pin differs: --yes does not replace it without a confirmation; room-4b is down.
    assert code == 1, out + err
    assert "CN=roomos-sim" in out
    assert ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper() in out
    assert "lab-1" in out and "CHANGED" in out and "room-4b" in out and "unreachable" in out
    assert cfg.read_bytes() == before[cfg].replace(
        b'id = "lobby"   # by the entrance\n',
        b'id = "lobby"   # by the entrance\nfingerprint = "' + fp.encode() + b'"\n',
    )
    # No fingerprint column yet: one is added, to the header and to every row.
    assert csv.read_bytes() == (
        b"# floor 4\r\n"
        b'id,"url",time_zone,fingerprint\r\n'
        + f'"room-4a",{fleet.devices[1].url},Europe/Oslo,{fp}\r\n'.encode()
        + b"room-4b,wss://127.0.0.1:1/ws,,\r\n"
    )
    assert inc.read_bytes() == before[inc]
    no_credentials_reached(fleet)

    # Confirming replaces the changed pin, in place, comment kept.
    code, out, err = await edge_agent("trust", "-c", str(cfg), "lab-1", "--yes", stdin="y\n")
    assert code == 0, out + err
    assert inc.read_bytes() == before[inc].replace(OTHER_FP.encode(), fp.encode())
    code, out, err = await edge_agent(
        "trust", "-c", str(cfg), "--check", "lobby", "room-4a", "lab-1"
    )
    assert code == 0, out + err
    assert "3 match, 0 changed" in out
    no_credentials_reached(fleet)

    # The counters can fail: a real upgrade with credentials is counted.
    ctx = ssl.create_default_context(cadata=fleet.cert_pem.decode())
    ctx.check_hostname = False
    auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    async with websockets.connect(
        fleet.devices[0].url, ssl=ctx, additional_headers={"Authorization": f"Basic {auth}"}
    ):
        pass
    assert fleet.devices[0].credentials_received == 1


async def test_interactive_no_writes_nothing(tmp_path: Path, fleet: DeviceFleet) -> None:
    cfg, csv, inc = write_site(tmp_path, fleet)
    before = {p: p.read_bytes() for p in (cfg, csv, inc)}
    code, out, err = await edge_agent("trust", "-c", str(cfg), "lobby", "room-4a", stdin="n\n")
    assert code == 0, out + err
    assert "[y/N]" in out and "no pins written" in out
    assert {p: p.read_bytes() for p in before} == before
    code, out, err = await edge_agent("trust", "-c", str(cfg), "lobby", "room-4a", stdin="y\n")
    assert code == 0, out + err
    assert "wrote 1 pin(s) to agent.toml" in out and "wrote 1 pin(s) to rooms.csv" in out
    no_credentials_reached(fleet)


async def test_check_lists_rooms_whose_certificate_changed(
    tmp_path: Path, fleet: DeviceFleet
) -> None:
    fp = fleet.cert_sha256
    csv = tmp_path / "rooms.csv"
    original = (
        "id,url,fingerprint,username\n"
        f"room-1,{fleet.devices[0].url},{fp},admin\n"
        f'room-2,{fleet.devices[1].url},"{OTHER_FP}",admin\n'
    )
    csv.write_text(original)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('site = "hq"\ndevices_file = "rooms.csv"\n[defaults]\npassword_env = "X"\n')
    code, out, err = await edge_agent("trust", "-c", str(cfg), "--check")
    assert code == 1, out + err
    assert "room-2: certificate changed (rooms.csv:3)" in out
    assert "room-1" not in out
    assert "1 match, 1 changed" in out
    # The existing cell is rewritten (its quotes go); every other byte stays.
    code, out, err = await edge_agent("trust", "-c", str(cfg), "room-2", stdin="y\n")
    assert code == 0, out + err
    assert csv.read_text() == original.replace(f'"{OTHER_FP}"', fp)
    assert (await edge_agent("trust", "-c", str(cfg), "--check"))[0] == 0
    no_credentials_reached(fleet)


async def test_usage_errors_and_plain_ws(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'site = "hq"\n[defaults]\npassword_env = "X"\n'
        '[[devices]]\nid = "plain"\nurl = "ws://127.0.0.1:1/ws"\n'
    )
    code, _, err = await edge_agent("trust", "-c", str(cfg))
    assert code == 2 and "name the rooms to trust (ID ...), or --all" in err
    code, _, err = await edge_agent("trust", "-c", str(cfg), "nope")
    assert code == 2 and "not in the inventory: nope" in err
    code, _, err = await edge_agent("trust", "-c", str(cfg), "plain", "--all")
    assert code == 2 and "not both" in err
    code, out, err = await edge_agent("trust", "-c", str(cfg), "--all", "--yes")
    assert code == 69, out + err
    assert "ws:// has no certificate to pin (use wss://)" in out
    assert "no pins written" in out


async def test_a_config_that_cannot_be_edited_safely_is_left_alone(
    tmp_path: Path, fleet: DeviceFleet
) -> None:
    cfg = tmp_path / "agent.toml"
    text = (
        'site = "hq"\n'
        f'devices = [{{ id = "inline", url = "{fleet.devices[0].url}" }}]\n'
        '[defaults]\npassword_env = "X"\n'
    )
    cfg.write_text(text)
    code, out, err = await edge_agent("trust", "-c", str(cfg), "--all", "--yes")
    assert code == 1, out + err
    assert "nothing written to agent.toml" in err
    assert f'inline: fingerprint = "{fleet.cert_sha256}"' in err
    assert cfg.read_text() == text


def test_pins_in_a_control_hub_export_keep_its_encoding(tmp_path: Path) -> None:
    """The export stays UTF-16 with its BOM, tabs and CRLF; a fingerprint column is added."""
    from edge_agent.config.pins import write_csv_pins

    rows = ["Workspace\tIP Address\tSerial Number", "Room 4A\t10.0.4.1\tFOC1", "Huddle\t10.0.4.2\t"]
    path = tmp_path / "export.csv"
    path.write_bytes(b"\xff\xfe" + ("\r\n".join(rows) + "\r\n").encode("utf-16-le"))
    write_csv_pins(path, {3: OTHER_FP})
    expected = [rows[0] + "\tfingerprint", rows[1] + "\t", rows[2] + "\t" + OTHER_FP]
    assert path.read_bytes() == b"\xff\xfe" + ("\r\n".join(expected) + "\r\n").encode("utf-16-le")
