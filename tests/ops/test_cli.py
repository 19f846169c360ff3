"""The ``edge-agent`` command line, run as a real process (``python -m edge_agent``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.ops.api import LocalApi
from edge_agent.ops.api_guard import ApiGuard
from edge_agent.store import Change, Store

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "agent.example.toml"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {
    "EDGE_AGENT_DEVICE_PASSWORD": "Dev1ce-Passw0rd",
    "EDGE_AGENT_WEBHOOK_SECRET": WHSEC,
    "EDGE_AGENT_MQTT_PASSWORD": "mqtt-pw",
}


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        check=False,
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=60,
        cwd=REPO,
    )


async def acli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(env),
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, body: str, *, site: str = "hq") -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(f'site = "{site}"\n[store]\npath = "{tmp_path / "agent.db"}"\n' + body)
    return p


WEBHOOK_ONLY = """
[webhook]
url = "{url}"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
"""


# ---------------------------------------------------------------------------------------------
# basics and check-config
# ---------------------------------------------------------------------------------------------


def test_version_and_help() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == "edge-agent 0.1.0"
    r = cli("--help")
    assert r.returncode == 0
    for command in ("run", "check-config", "demo", "status", "outbox"):
        assert command in r.stdout
    assert cli().returncode == 2
    assert cli("nonsense").returncode == 2


def test_check_config_example_ok() -> None:
    r = cli("check-config", "-c", str(EXAMPLE), env=ENV)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "2 device(s)" in r.stdout and "webhook, mqtt" in r.stdout


def test_check_config_invalid_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'site = "Bad Site"\n'
        '[defaults]\npassword = "hunter2"\n'
        '[[devices]]\nid = "room-4a"\nhost = "10.0.0.1"\nfingerprint = "12:34"\n'
        '[[devices]]\nid = "room-4a"\n'
        '[log]\nlevel = "loud"\n'
    )
    for command in ("check-config", "run"):
        r = cli(command, "-c", str(cfg))
        assert r.returncode == 78, r.stderr
        for line in (
            "site: ",
            "defaults.password: secrets are not accepted",
            "devices[0].fingerprint: ",
            "devices[1]: set exactly one of host or url",
            "devices[1].id: duplicate",
            "log.level: ",
            "no sink configured",
        ):
            assert line in r.stderr, (line, r.stderr)
        assert "hunter2" not in r.stderr + r.stdout


def test_missing_secret_env_is_78(tmp_path: Path) -> None:
    r = cli("check-config", "-c", str(EXAMPLE), env={"EDGE_AGENT_WEBHOOK_SECRET": WHSEC})
    assert r.returncode == 78
    assert "defaults.password_env: environment variable EDGE_AGENT_DEVICE_PASSWORD" in r.stderr
    assert "mqtt.password_env" in r.stderr and "webhook.secret_env" not in r.stderr
    r = cli("run", "-c", str(EXAMPLE))
    assert r.returncode == 78 and "EDGE_AGENT_DEVICE_PASSWORD" in r.stderr


def test_missing_config_file_is_78(tmp_path: Path) -> None:
    r = cli("check-config", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 78 and "no such file" in r.stderr


async def test_check_config_connect_sinks(tmp_path: Path) -> None:
    from tests.mosquitto import Mosquitto
    from tests.receivers import WebhookReceiver

    rx = WebhookReceiver(secret=WHSEC)
    await rx.start()
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        body = (
            WEBHOOK_ONLY.format(url=rx.url) + f'[mqtt]\nurl = "{broker.url}"\nprotocol = "3.1.1"\n'
        )
        cfg = write_config(tmp_path, body)
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=ENV)
        assert code == 0, out + err
        assert "webhook  reach" in out and "HTTP 405" in out  # OPTIONS: nothing is delivered
        assert "CONNACK (MQTT 3.1.1)" in out and "FAIL" not in out
        assert rx.requests == 0 and not rx.events
    finally:
        broker.stop()
        await rx.stop()


async def test_check_config_connect_failures(tmp_path: Path) -> None:
    from tests.mosquitto import free_port

    port = free_port()
    body = WEBHOOK_ONLY.format(url=f"http://127.0.0.1:{port}/hook")
    body += f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
    cfg = write_config(tmp_path, body)
    code, out, err = await acli(
        "check-config", "-c", str(cfg), "--connect", "--timeout", "3", env=ENV
    )
    assert code == 1, out + err
    lines = [line for line in out.splitlines() if "FAIL" in line]
    assert any(line.startswith("webhook") for line in lines)
    assert any(line.startswith("mqtt") for line in lines)
    assert "0 passed" in out or "1 passed" in out  # the secret format check passes


def test_a_config_with_the_removed_webhook_engine_is_refused(tmp_path: Path) -> None:
    """One HTTP stack: ``webhook.engine`` is gone, and a config still naming it says so."""
    body = WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook") + 'engine = "httpx"\n'
    r = cli("check-config", "-c", str(write_config(tmp_path, body)), env=ENV)
    assert r.returncode == 78, r.stdout + r.stderr
    assert "webhook.engine: unknown key" in r.stderr


async def test_check_config_connect_mqtt_uses_the_sinks_errors(tmp_path: Path) -> None:
    from tests.mosquitto import Mosquitto, make_password_file

    with Mosquitto(tmp_path, password_file=make_password_file(tmp_path, {"edge": "pw"})) as broker:
        body = f'[mqtt]\nurl = "{broker.url}"\nusername = "edge"\n'
        body += 'password_env = "EDGE_AGENT_MQTT_PASSWORD"\n'
        cfg = write_config(tmp_path, body)
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=ENV)
        assert code == 1, out + err
        row = parse_table(out)[("mqtt", "connect")]
        assert row.startswith(f"FAIL    {broker.url}: broker 127.0.0.1:{broker.port} refused the")
        assert "credentials for user 'edge'" in row
        assert row.endswith(
            "check [mqtt] username and password_env EDGE_AGENT_MQTT_PASSWORD in the config"
        ), row
        assert "mqtt-pw" not in out + err
        right = {**ENV, "EDGE_AGENT_MQTT_PASSWORD": "pw"}
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=right)
        assert code == 0, out + err
        assert parse_table(out)[("mqtt", "connect")] == f"ok      {broker.url}: CONNACK (MQTT 5)"


def parse_table(out: str) -> dict[tuple[str, str], str]:
    """check-config's table: {(target, check): "RESULT DETAIL"}."""
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("TARGET"))
    c, r = header.index("CHECK"), header.index("RESULT")
    rows = {}
    for line in lines[lines.index(header) + 1 :]:
        if len(line) > r and line[r:].split()[0] in ("ok", "FAIL", "WARN"):
            rows[(line[:c].strip(), line[c:r].strip())] = line[r:].strip()
    return rows


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


@dataclass
class RunningAgent:
    store: Any

    def devices(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "room-4a",
                "connected": True,
                "window_size": 3,
                "reconnects": 1,
                "time_zone": "Europe/Oslo",
                "last_error": None,
            },
            {
                "id": "room-4b",
                "connected": False,
                "window_size": 0,
                "reconnects": 7,
                "time_zone": None,
                "last_error": "HTTP 403",
            },
        ]

    def sinks(self) -> list[dict[str, Any]]:
        return [{"name": "webhook", "state": "running", "ready": True, "last_error": None}]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    yield s
    await s.close()


async def test_status_against_running_api(store: Store) -> None:
    await store.commit(Change("room-4a", events=[envelope("room-4a") for _ in range(4)]))
    agent = RunningAgent(store)
    async with LocalApi(agent, "127.0.0.1:0") as api:
        code, out, err = await acli("status", "--api", api.url)
        assert code == 0, out + err
        assert f"agent {api.url}  READY" in out
        assert "room-4a" in out and "room-4b" in out and "HTTP 403" in out
        webhook_line = next(line for line in out.splitlines() if line.startswith("webhook"))
        assert webhook_line.split()[:4] == ["webhook", "running", "yes", "4"]
        assert "outbox: 4 stored, 0 pending request(s), 0 dead letter(s)" in out
        agent.store = None
        code, out, _ = await acli("status", "--api", api.url)
        assert code == 1 and "NOT READY: store not open" in out
        code, out, _ = await acli("status", "--api", api.url, "--json")
        assert code == 1 and '"ready":false' in out


def test_status_unreachable_is_69() -> None:
    from tests.mosquitto import free_port

    r = cli("status", "--api", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 69 and "cannot reach" in r.stderr


# ---------------------------------------------------------------------------------------------
# outbox dead-letter
# ---------------------------------------------------------------------------------------------


def envelope(device: str, etype: str = "booking.created") -> dict[str, Any]:
    return {
        "type": etype,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": str(uuid.uuid4()), "site": "hq", "device_id": device},
    }


async def make_dead_letters(path: Path, n: int) -> None:
    s = await Store.open(path, sinks=("webhook",))
    try:
        await s.commit(Change("room-4a", events=[envelope("room-4a") for _ in range(n)]))
        batch = await s.read_outbox("webhook", [("room-4a", 0, n)])
        await s.dead_letter("webhook", batch, reason="HTTP 400 Bad Request", attempts=3)
    finally:
        await s.close()


async def test_dead_letter_list_replay_purge(tmp_path: Path) -> None:
    await make_dead_letters(tmp_path / "agent.db", 3)
    cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url="https://example.invalid/hook"))
    c = ["-c", str(cfg)]

    code, out, err = await acli("outbox", "dead-letter", "list", *c)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "HTTP 400" in line]
    assert len(rows) == 3 and "3 dead letter(s)" in out
    ids = [line.split()[0] for line in rows]

    code, out, err = await acli("outbox", "dead-letter", "list", *c, "--json", "--limit", "1")
    assert code == 0 and out.count("\n") == 1 and '"reason":"HTTP 400 Bad Request"' in out

    code, out, err = await acli("outbox", "dead-letter", "replay", *c, "--id", ids[0])
    assert code == 0 and "replayed 1 " in out, err

    code, out, err = await acli("outbox", "dead-letter", "purge", *c)
    assert code == 2 and "--all" in err  # purging everything must be asked for

    code, out, err = await acli("outbox", "dead-letter", "purge", *c, "--sink", "webhook")
    assert code == 0 and "purged 2 " in out, err

    code, out, err = await acli("outbox", "dead-letter", "list", *c)
    assert "0 dead letter(s)" in out

    s = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    try:
        stats = await s.stats()
        assert stats["dead_letters"] == 0 and stats["sinks"]["webhook"]["depth"] == 1
    finally:
        await s.close()


async def test_dead_letter_replay_goes_through_the_running_agent(tmp_path: Path) -> None:
    """While the agent runs the CLI must not write its database: a second Store numbered the
    replayed rows from its own seq, and the agent's next event collided and was dropped."""
    path = tmp_path / "agent.db"
    await make_dead_letters(path, 2)
    agent_store = await Store.open(path, sinks=("webhook",))
    try:
        # The replay is a state-changing route: the CLI sends the token from [api] token_env.
        token = "cli-test-token-0123456789"
        guard = ApiGuard("127.0.0.1:0", [token])
        async with LocalApi(RunningAgent(agent_store), "127.0.0.1:0", guard=guard) as api:
            body = WEBHOOK_ONLY.format(url="https://example.invalid/hook")
            cfg = write_config(
                tmp_path,
                body + f'[api]\nlisten = "127.0.0.1:{api.port}"\ntoken_env = "API_TOKEN"\n',
            )
            env = {"API_TOKEN": token}
            code, out, err = await acli("outbox", "dead-letter", "list", "-c", str(cfg))
            assert code == 0 and "2 dead letter(s)" in out, err
            code, out, err = await acli(
                "outbox", "dead-letter", "replay", "-c", str(cfg), env={"API_TOKEN": "wrong" * 4}
            )
            assert code == 1 and "HTTP 401" in err and "token_env" in err, out + err
            code, out, err = await acli("outbox", "dead-letter", "replay", "-c", str(cfg), env=env)
            assert code == 0 and "replayed 2 " in out, err
            await agent_store.commit(Change("room-4a", events=[envelope("room-4a")]))
            stats = await agent_store.stats()  # the agent's own event was not swallowed
            assert stats["outbox_total"] == 3 and stats["sinks"]["webhook"]["depth"] == 3
            assert "through the running agent" in out
            code, out, err = await acli(
                "outbox", "dead-letter", "purge", "-c", str(cfg), "--all", "--api", api.url, env=env
            )
            assert code == 0 and "purged 0 " in out, err
    finally:
        await agent_store.close()


async def test_dead_letter_replay_with_the_agent_api_unreachable(tmp_path: Path) -> None:
    from tests.mosquitto import free_port

    path = tmp_path / "agent.db"
    await make_dead_letters(path, 1)
    body = WEBHOOK_ONLY.format(url="https://example.invalid/hook")
    cfg = write_config(tmp_path, body + f'[api]\nlisten = "127.0.0.1:{free_port()}"\n')
    agent_store = await Store.open(path, sinks=("webhook",))
    try:
        code, out, err = await acli("outbox", "dead-letter", "replay", "-c", str(cfg))
        assert code == 69, out + err
        assert f"another edge-agent is using {path} (pid {os.getpid()}?)" in err
        assert "did not answer" in err and "--api URL" in err
        assert len(await agent_store.dead_letters()) == 1  # nothing changed
    finally:
        await agent_store.close()


def test_dead_letter_bad_sink_and_missing_store(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url="https://example.invalid/hook"))
    r = cli("outbox", "dead-letter", "list", "-c", str(cfg))
    assert r.returncode == 1 and "no store at" in r.stderr
    r = cli("outbox", "dead-letter", "list", "-c", str(cfg), "--sink", "mqtt")
    assert r.returncode == 2 and "not a configured sink" in r.stderr


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def test_demo_passes_arguments_through() -> None:
    r = cli("demo", "--help")
    assert r.returncode == 0, r.stderr


async def test_check_config_connect_devices(tmp_path: Path) -> None:
    """Against the simulator: a pinned device, bad credentials, a CA-verified user without the
    Admin role (configuration unreadable: warnings), and an HTTP server without /ws."""
    from aiohttp import web

    from device_sim import DeviceFleet, SimConfig

    fleet = DeviceFleet(
        SimConfig(
            devices=4,
            password="Adm1n-Pw-4711",
            users={"viewer": ("view-pw", "User"), "integrator": ("int-pw", "Integrator")},
            time_zone="Europe/Oslo",
            booking_timeout_s=90,
        )
    )
    await fleet.start()
    not_xapi = web.AppRunner(web.Application())
    await not_xapi.setup()
    site = web.TCPSite(not_xapi, "127.0.0.1", 0)
    await site.start()
    port_404 = not_xapi.addresses[0][1]
    ca = tmp_path / "device-ca.pem"
    ca.write_bytes(fleet.cert_pem)
    try:
        d = fleet.devices
        body = f"""
[defaults]
username = "admin"
password_env = "EDGE_AGENT_DEVICE_PASSWORD"
[[devices]]
id = "pinned"
url = "{d[0].url}"
fingerprint = "{fleet.cert_sha256}"
[[devices]]
id = "bad-password"
url = "{d[1].url}"
insecure = true
password_env = "WRONG_PW"
[[devices]]
id = "viewer"
url = "{d[2].url}"
ca_file = "{ca}"
username = "viewer"
password_env = "VIEW_PW"
[[devices]]
id = "integrator"
url = "{d[3].url}"
ca_file = "{ca}"
username = "integrator"
password_env = "INT_PW"
[[devices]]
id = "no-ws"
url = "ws://127.0.0.1:{port_404}/ws"
""" + WEBHOOK_ONLY.format(url=f"http://127.0.0.1:{port_404}/hook")
        cfg = write_config(tmp_path, body)
        env = ENV | {
            "EDGE_AGENT_DEVICE_PASSWORD": "Adm1n-Pw-4711",
            "WRONG_PW": "nope",
            "VIEW_PW": "view-pw",
            "INT_PW": "int-pw",
        }
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=env)
        assert code == 1, out + err
        rows = parse_table(out)
        assert rows[("pinned", "connect")].startswith("ok") and "pinned fingerprint" in out
        assert rows[("pinned", "Bookings List")].startswith("ok")
        assert "Europe/Oslo" in out and "FollowHTTPService" in out
        assert [k for k, v in rows.items() if k[0] == "pinned" and not v.startswith("ok")] == []
        assert rows[("bad-password", "connect")].startswith("FAIL")
        assert "credentials" in rows[("bad-password", "connect")]
        assert rows[("viewer", "connect")].startswith("ok")
        assert rows[("viewer", "Bookings List")].startswith("ok")
        assert rows[("viewer", "time zone")].startswith("ok")  # the schema lets User read it
        # Integrator may read the time zone but not use Bookings: the hint names the right role
        assert rows[("integrator", "Bookings List")].startswith("FAIL")
        assert "User (or Admin)" in rows[("integrator", "Bookings List")]
        assert rows[("no-ws", "connect")].startswith("FAIL")
        assert "NetworkServices Websocket" in rows[("no-ws", "connect")]
        for secret in ("Adm1n-Pw-4711", "view-pw", "int-pw", WHSEC):
            assert secret not in out + err
    finally:
        await not_xapi.cleanup()
        await fleet.stop()


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


async def test_run_under_systemd_notify(tmp_path: Path) -> None:
    """``run`` as systemd starts it: READY=1 on the notify socket, the local API up, SIGHUP
    reloads, SIGTERM stops with 0, and no secret in the debug log."""
    import signal
    import socket

    import httpx

    from device_sim import DeviceFleet, SimConfig
    from tests.mosquitto import free_port
    from tests.receivers import WebhookReceiver

    password = "Run-Adm1n-Pw-0815"
    fleet = DeviceFleet(SimConfig(devices=2, password=password))
    await fleet.start()
    rx = WebhookReceiver(secret=WHSEC)
    await rx.start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    api_port = free_port()
    body = f"""
[defaults]
username = "admin"
password_env = "EDGE_AGENT_DEVICE_PASSWORD"
[[devices]]
id = "room-1"
url = "{fleet.devices[0].url}"
fingerprint = "{fleet.cert_sha256}"
[api]
listen = "127.0.0.1:{api_port}"
""" + WEBHOOK_ONLY.format(url=rx.url)
    cfg = write_config(tmp_path, body)
    env = cli_env(
        ENV
        | {
            "EDGE_AGENT_DEVICE_PASSWORD": password,
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "EDGE_AGENT_LOG_LEVEL": "debug",
        }
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

    try:
        assert "READY=1" in await next_notify("READY=1")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            for _ in range(100):
                r = await http.get("/readyz")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
        code, out, _ = await acli("status", "-c", str(cfg))
        assert code == 0 and "room-1" in out and "READY" in out, out
        # SIGHUP applies the new device list without a restart
        second = f"""
[[devices]]
id = "room-2"
url = "{fleet.devices[1].url}"
fingerprint = "{fleet.cert_sha256}"
"""
        cfg.write_text(cfg.read_text() + second)
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in await next_notify("RELOADING=1")
        assert await next_notify("READY=1")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            for _ in range(100):
                devices = (await http.get("/v1/devices")).json()["devices"]
                if [d["connected"] for d in devices] == [True, True]:
                    break
                await asyncio.sleep(0.1)
            assert sorted(d["id"] for d in devices) == ["room-1", "room-2"], devices
            assert all(d["connected"] for d in devices), devices
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in await next_notify("STOPPING=1")
        async with asyncio.timeout(30):
            out_b, err_b = await proc.communicate()
        assert proc.returncode == 0, err_b.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
        await rx.stop()
        await fleet.stop()
    log = err_b.decode()
    assert '"level":"debug"' in log  # EDGE_AGENT_LOG_LEVEL applied, JSON (not a TTY)
    for secret in (password, WHSEC, WHSEC.removeprefix("whsec_")):
        assert secret not in log + out_b.decode()


async def test_run_refuses_a_store_another_agent_uses(tmp_path: Path) -> None:
    body = WEBHOOK_ONLY.format(url="https://example.invalid/hook")
    cfg = write_config(tmp_path, body + '[api]\nlisten = "127.0.0.1:0"\n')
    other = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    try:
        code, out, err = await acli("run", "-c", str(cfg), env=ENV)
    finally:
        await other.close()
    assert code == 1, out + err
    assert f"another edge-agent is using {tmp_path / 'agent.db'} (pid {os.getpid()}?)" in err
    assert "Traceback" not in err
