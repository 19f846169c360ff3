"""The device inventory: ``devices_file`` (our CSV or a Control Hub export) and ``include``
(``devices.d/*.toml``), through the real CLI; errors name the room, the file and the line."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edge_agent.config import ConfigError, DeviceConfig
from edge_agent.config.load import load_config_and_inventory
from tests.ops.test_cli import ENV, WEBHOOK_ONLY, WHSEC, cli, cli_env

FP = "ab" * 32

HEAD = """site = "hq"
[store]
path = "{db}"
[defaults]
password_env = "EDGE_AGENT_DEVICE_PASSWORD"
[webhook]
url = "http://127.0.0.1:9/hook"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
"""


def site(tmp_path: Path, top: str = "", devices: str = "") -> Path:
    """``agent.toml`` with ``top`` as top-level keys (before any table) and ``devices`` after."""
    p = tmp_path / "agent.toml"
    p.write_text(top + HEAD.format(db=tmp_path / "agent.db") + devices)
    return p


def test_csv_and_includes_are_merged_in_order(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text(
        "# the fourth floor\n"
        "id,host,fingerprint,time_zone,username\n"
        f"room-4a,10.0.4.1,{FP},Europe/Oslo,\n"
        '"room-4b","wss://10.0.4.2:8443/ws",,,"integrator"\n'
        "\n"
    )
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "b.toml").write_text('[[devices]]\nid = "lab-2"\nhost = "10.9.0.2"\n')
    (tmp_path / "devices.d" / "a.toml").write_text('[[devices]]\nid = "lab-1"\nhost = "10.9.0.1"\n')
    cfg = site(
        tmp_path,
        'devices_file = "rooms.csv"\ninclude = ["devices.d/*.toml"]\n',
        '[[devices]]\nid = "lobby"\nhost = "10.0.0.1"\n',
    )
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 0, r.stderr
    assert "5 device(s)" in r.stdout
    loaded, inv = load_config_and_inventory(cfg)
    assert [d.id for d in loaded.devices] == ["lobby", "room-4a", "room-4b", "lab-1", "lab-2"]
    assert [o.where() for o in inv.origins] == [
        "agent.toml:11",
        "rooms.csv:3",
        "rooms.csv:4",
        "devices.d/a.toml:1",
        "devices.d/b.toml:1",
    ]
    room_4a, room_4b = loaded.devices[1], loaded.devices[2]
    assert room_4a.fingerprint == FP and room_4a.time_zone == "Europe/Oslo"
    assert room_4a.username is None  # an empty cell: [defaults] applies
    assert room_4b.url == "wss://10.0.4.2:8443/ws" and room_4b.username == "integrator"


def test_csv_problems_name_the_file_line_and_room(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text(
        "id,host,fingerprint,colour,password\n"
        "room-1,10.0.0.2,,red,hunter2\n"
        "room-2,10.0.0.3,12:34,,\n"
        "room-1,10.0.0.4,,,\n"
    )
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "x.toml").write_text(
        '[[devices]]\nid = "ok-1"\nhost = "10.9.0.1"\n\n[[devices]]\nid = "bad-2"\nurl = "https://x"\n'
    )
    cfg = site(
        tmp_path,
        'devices_file = "rooms.csv"\ninclude = ["devices.d/*.toml"]\n',
        '[[devices]]\nid = "lobby"\nhost = "10.0.0.1"\nfingerprnt = "x"\n',
    )
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 78, r.stderr
    for line in (
        "rooms.csv:1: unknown column 'colour'; allowed: id, host, url,",
        "rooms.csv:1: column 'password': secrets are not accepted in the inventory",
        "rooms.csv:3: room-2.fingerprint: expected the certificate's SHA-256",
        "rooms.csv:4: room-1.id: duplicate device id 'room-1' (also room-1 at rooms.csv:2)",
        "devices.d/x.toml:5: bad-2.url: the device URL must start with wss://",
        "devices[0].fingerprnt: unknown key (did you mean 'fingerprint'?)",
        "(lobby, agent.toml:11)",
    ):
        assert line in r.stderr, (line, r.stderr)
    assert "hunter2" not in r.stderr + r.stdout
    assert "devices[3]" not in r.stderr and "devices[6]" not in r.stderr


def test_the_same_device_in_two_files_is_named_by_both(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text("id,url\nroom-1,wss://10.0.0.1/ws\n")
    cfg = site(
        tmp_path, 'devices_file = "rooms.csv"\n', '[[devices]]\nid = "a"\nhost = "10.0.0.1"\n'
    )
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 78
    assert "rooms.csv:2: room-1.url: the same device as devices[0] (a, agent.toml:10)" in r.stderr


@pytest.mark.parametrize(
    ("files", "top", "expected"),
    [
        ({}, 'devices_file = "rooms.csv"\n', "devices_file: rooms.csv: no such file"),
        ({"rooms.csv": ""}, 'devices_file = "rooms.csv"\n', "rooms.csv: empty"),
        ({"rooms.csv": "host\n1.2.3.4\n"}, 'devices_file = "rooms.csv"\n', "no id column"),
        ({"rooms.csv": 'id,host\n"room-1,1.2.3.4\n'}, 'devices_file = "rooms.csv"\n',
         "rooms.csv:2: a quoted field is not closed"),
        ({"rooms.csv": "id,host\nr1,1.2.3.4,extra\n"}, 'devices_file = "rooms.csv"\n',
         "rooms.csv:2: 3 cells but the header names 2 columns"),
        ({}, 'include = ["floor4.toml"]\n', "include: floor4.toml: no such file"),
        ({"d.toml": "[[devices]\n"}, 'include = ["d.toml"]\n', "d.toml: not valid TOML"),
        ({"d.toml": 'site = "x"\n'}, 'include = ["d.toml"]\n',
         "d.toml: an included file holds [[devices]] entries only; found site"),
    ],
)  # fmt: skip
def test_unreadable_inventories_exit_78(
    tmp_path: Path, files: dict[str, str], top: str, expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = cli("check-config", "-c", str(site(tmp_path, top)), env=ENV)
    assert r.returncode == 78 and expected in r.stderr, r.stderr


def test_an_empty_include_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "devices.d").mkdir()
    cfg = site(tmp_path, 'include = ["devices.d/*.toml"]\n', '[[devices]]\nid = "a"\nhost = "h"\n')
    assert cli("check-config", "-c", str(cfg), env=ENV).returncode == 0


# ---- Control Hub's device export ---------------------------------------------------------

HUB_HEADER = ["Display Name", "Workspace", "IP Address", "MAC Address", "Serial Number", "Product"]


def test_a_control_hub_export_utf16_tabs(tmp_path: Path) -> None:
    rows = [
        HUB_HEADER,
        ["Board 4A", "Room 4A (Oslo)", "10.0.4.1", "11:22:33:44:AA:01", "FOC1", "Cisco Board Pro"],
        ["Desk", "Huddle B", "10.0.4.2", "11:22:33:44:AA:02", "FOC2", "Cisco Desk Pro"],
    ]
    text = "\r\n".join("\t".join(r) for r in rows) + "\r\n"
    (tmp_path / "export.csv").write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    cfg = site(tmp_path, 'devices_file = "export.csv"\n')
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 0, r.stderr
    loaded, _ = load_config_and_inventory(cfg)
    assert [(d.id, d.host) for d in loaded.devices] == [
        ("room-4a-oslo", "10.0.4.1"),
        ("huddle-b", "10.0.4.2"),
    ]


def test_a_control_hub_workspace_export_is_matched_tolerantly(tmp_path: Path) -> None:
    """No stored doc gives the Workspaces export's exact header: case, spacing, punctuation and
    camelCase are folded, and every column the agent does not use is ignored, not an error."""
    header = [
        " WORKSPACE NAME ",
        "workspaceId",
        "Ip-Address",
        "Capacity",
        "Type",
        "Calendar Email",
        "Some Column Added Later",
    ]
    rows = [
        header,
        ["Room 4A (Oslo)", "Y2lz-1", "10.0.4.1", "8", "meetingRoom", "room-4a@contoso.com", "x"],
        ["Huddle B", "Y2lz-2", "10.0.4.2", "4", "huddle", "", ""],
    ]
    (tmp_path / "export.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    # a calendar link needs its source configured
    graph = '[microsoft]\ntenant_id = "t"\nclient_id = "c"\nclient_secret_env = "GRAPH_SECRET"\n'
    loaded, _ = load_config_and_inventory(site(tmp_path, 'devices_file = "export.csv"\n', graph))
    assert [(d.id, d.host) for d in loaded.devices] == [
        ("room-4a-oslo", "10.0.4.1"),
        ("huddle-b", "10.0.4.2"),
    ]
    if "calendar" in DeviceConfig.model_fields:
        assert [d.calendar for d in loaded.devices] == ["room-4a@contoso.com", None]


def test_column_key_folds_case_spacing_punctuation_and_camel_case() -> None:
    from edge_agent.config.inventory import column_key

    for spelling in ("IP Address", " ip-address ", "ipAddress", "IP_ADDRESS", "Ip/Address"):
        assert column_key(spelling) == "ip_address", spelling
    assert column_key("Time Zone") == column_key("timeZone") == "time_zone"
    assert column_key("id") == "id"


def test_our_csv_with_a_typo_is_not_taken_for_an_export(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text("name,host\nroom-1,10.0.0.1\n")
    r = cli("check-config", "-c", str(site(tmp_path, 'devices_file = "rooms.csv"\n')), env=ENV)
    assert r.returncode == 78
    assert "unknown column 'name'" in r.stderr and "no id column" in r.stderr, r.stderr


def test_a_control_hub_export_without_addresses_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "export.csv").write_text("Display Name,Workspace,Serial Number\nBoard,R,FOC1\n")
    r = cli("check-config", "-c", str(site(tmp_path, 'devices_file = "export.csv"\n')), env=ENV)
    assert r.returncode == 78
    assert "export.csv:1: looks like a Control Hub export but lacks the device's address" in (
        r.stderr
    )
    assert "found: Display Name, Workspace, Serial Number" in r.stderr


def test_a_control_hub_row_without_an_address_is_named(tmp_path: Path) -> None:
    (tmp_path / "export.csv").write_text("Workspace,IP Address\nRoom 1,10.0.0.1\nRoom 2,\n")
    r = cli("check-config", "-c", str(site(tmp_path, 'devices_file = "export.csv"\n')), env=ENV)
    assert r.returncode == 78
    assert "export.csv:3: room-2: set exactly one of host or url" in r.stderr, r.stderr


@pytest.mark.skipif(
    "calendar" not in DeviceConfig.model_fields, reason="the calendar key is not merged yet"
)
def test_the_calendar_column_links_a_room(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text("id,host,calendar\nroom-4a,10.0.4.1,room-4a@contoso.com\n")
    # a calendar link needs its source configured ([microsoft]; tests/rooms has the refusal)
    graph = '[microsoft]\ntenant_id = "t"\nclient_id = "c"\nclient_secret_env = "GRAPH_SECRET"\n'
    loaded, _ = load_config_and_inventory(site(tmp_path, 'devices_file = "rooms.csv"\n', graph))
    assert loaded.devices[0].calendar == "room-4a@contoso.com"


def test_load_config_reports_inventory_problems_with_the_others(tmp_path: Path) -> None:
    (tmp_path / "rooms.csv").write_text("id,hots\nr1,h\n")
    cfg = site(tmp_path, 'devices_file = "rooms.csv"\nsite_x = 1\n')
    with pytest.raises(ConfigError) as exc:
        load_config_and_inventory(cfg)
    keys = [k for k, _ in exc.value.problems]
    assert "rooms.csv:1" in keys and "site_x" in keys


# ---- SIGHUP re-reads the inventory --------------------------------------------------------


async def test_sighup_rereads_the_csv_and_the_includes(tmp_path: Path) -> None:
    from device_sim import DeviceFleet, SimConfig
    from tests.mosquitto import free_port
    from tests.receivers import WebhookReceiver

    password = "Inv-Adm1n-Pw-31"
    fleet = DeviceFleet(SimConfig(devices=3, password=password))
    await fleet.start()
    rx = WebhookReceiver(secret=WHSEC)
    await rx.start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    api_port = free_port()
    d = fleet.devices
    csv = tmp_path / "rooms.csv"
    csv.write_text(f"id,url,fingerprint\nroom-1,{d[0].url},{fleet.cert_sha256}\n")
    (tmp_path / "devices.d").mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'site = "hq"\ndevices_file = "rooms.csv"\ninclude = ["devices.d/*.toml"]\n'
        f'[store]\npath = "{tmp_path / "agent.db"}"\n'
        '[defaults]\nusername = "admin"\npassword_env = "EDGE_AGENT_DEVICE_PASSWORD"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n' + WEBHOOK_ONLY.format(url=rx.url)
    )
    env = cli_env(
        ENV | {"EDGE_AGENT_DEVICE_PASSWORD": password, "NOTIFY_SOCKET": str(notify.getsockname())}
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "run", "-c", str(cfg),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    loop = asyncio.get_running_loop()

    async def next_notify(prefix: str) -> str:
        async with asyncio.timeout(20):
            while True:
                msg = (await loop.sock_recv(notify, 4096)).decode()
                if msg.startswith(prefix):
                    return msg

    async def devices_once_connected(expected: list[str]) -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            async with asyncio.timeout(20):
                while True:
                    got = (await http.get("/v1/devices")).json()["devices"]
                    if sorted(x["id"] for x in got) == expected and all(
                        x["connected"] for x in got
                    ):
                        return list(got)
                    await asyncio.sleep(0.05)

    try:
        assert await next_notify("READY=1")
        await devices_once_connected(["room-1"])
        with csv.open("a") as f:
            f.write(f"room-2,{d[1].url},{fleet.cert_sha256}\n")
        (tmp_path / "devices.d" / "lab.toml").write_text(
            f'[[devices]]\nid = "lab-1"\nurl = "{d[2].url}"\nfingerprint = "{fleet.cert_sha256}"\n'
        )
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in await next_notify("RELOADING=1")
        assert await next_notify("READY=1")
        await devices_once_connected(["lab-1", "room-1", "room-2"])
        # A broken row is refused with its line, and the running list is kept.
        with csv.open("a") as f:
            f.write("room-3,wss://10.0.0.1/ws,12:34\n")
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in await next_notify("RELOADING=1")
        assert await next_notify("READY=1")
        await devices_once_connected(["lab-1", "room-1", "room-2"])
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err_b = await proc.communicate()
        assert proc.returncode == 0, err_b.decode()[-3000:]
        assert "rooms.csv:4: room-3.fingerprint" in err_b.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
        await rx.stop()
        await fleet.stop()
