"""``check-config``'s rough edges (issue 15), through the real CLI: a POST-only receiver passes
the reach check, a missing ``ca_file`` is named, ``ws://`` to a TLS port suggests ``wss://``, a
missing store directory fails naming ``store.path``, an exposed API and ``insecure = true`` warn,
and ``--failures-only`` prints only what did not pass."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.ops.cli.check_config import webhook_reach
from tests.ops.test_cli import ENV, WEBHOOK_ONLY, acli, cli, parse_table, write_config
from tests.receivers import WebhookReceiver

DEVICE_PW = "Adm1n-Pw-4711"
DEVICE_ENV = ENV | {"EDGE_AGENT_DEVICE_PASSWORD": DEVICE_PW}
DEFAULTS = '[defaults]\nusername = "admin"\npassword_env = "EDGE_AGENT_DEVICE_PASSWORD"\n'


class _PostOnly(BaseHTTPRequestHandler):
    """A receiver written on the standard library: POST only, so OPTIONS gets its 501."""

    posts = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        type(self).posts += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def post_only_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PostOnly)
    thread = threading.Thread(target=server.serve_forever, name="post-only", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def fleet() -> AsyncIterator[object]:
    from device_sim import DeviceFleet, SimConfig

    f = DeviceFleet(SimConfig(devices=2, password=DEVICE_PW))
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


# -- the webhook reach check ---------------------------------------------------------------------


async def test_a_post_only_receiver_passes_reach(tmp_path: Path, post_only_url: str) -> None:
    """Before: "webhook reach FAIL ... HTTP 501" against a receiver that takes POSTs."""
    cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url=post_only_url))
    code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=ENV)
    assert code == 0, out + err
    row = parse_table(out)[("webhook", "reach")]
    assert row.startswith("ok") and "HTTP 501" in row and "accepts POST only" in row, row
    assert _PostOnly.posts == 0  # nothing was delivered


async def test_the_aiohttp_receiver_passes_reach_without_a_delivery(tmp_path: Path) -> None:
    async with WebhookReceiver(secret=None) as rx:
        cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url=rx.url))
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=ENV)
        assert code == 0, out + err
        assert parse_table(out)[("webhook", "reach")].startswith("ok")
        assert rx.requests == 0


@pytest.mark.parametrize(
    ("status", "result"),
    [(204, "ok"), (200, "ok"), (401, "ok"), (405, "ok"), (501, "ok"), (404, "WARN"),
     (410, "FAIL"), (500, "FAIL"), (502, "FAIL"), (503, "FAIL")],
)  # fmt: skip
def test_reach_verdict_by_status(status: int, result: str) -> None:
    row = webhook_reach("https://hooks.example/x", status)
    assert row.result == result
    assert f"HTTP {status}, TLS verified" in row.detail


# -- device checks -------------------------------------------------------------------------------


async def test_a_missing_ca_file_is_named_not_a_network_problem(
    tmp_path: Path, fleet: object
) -> None:
    url = fleet.devices[0].url  # type: ignore[attr-defined]
    missing = tmp_path / "device-ca.pem"
    body = DEFAULTS + f'[[devices]]\nid = "room-1"\nurl = "{url}"\nca_file = "device-ca.pem"\n'
    cfg = write_config(tmp_path, body + WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook"))
    # Without --connect a warning (the agent runs its other devices); with it, the failed row.
    code, out, err = await acli("check-config", "-c", str(cfg), env=DEVICE_ENV)
    assert code == 0, out + err
    assert f"warning: devices[room-1].ca_file: {missing}: no such file" in out, out
    code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=DEVICE_ENV)
    assert code == 1, out + err
    row = parse_table(out)[("room-1", "connect")]
    assert row.startswith(f"FAIL    ca_file {missing}: no such file (a relative ca_file is"), row
    assert "network" not in out and "firewall" not in out
    missing.write_text("not a certificate")  # readable: the connect check then runs
    code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=DEVICE_ENV)
    assert ("room-1", "connect") in parse_table(out), out + err


async def test_ws_to_a_tls_port_suggests_wss(tmp_path: Path, fleet: object) -> None:
    """Before: the hint was to change the device's WebSocket setting."""
    tls_url = fleet.devices[0].url  # type: ignore[attr-defined]
    plain = "ws:" + tls_url[len("wss:") :]
    body = DEFAULTS + f'[[devices]]\nid = "room-1"\nurl = "{plain}"\n'
    cfg = write_config(tmp_path, body + WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook"))
    code, out, err = await acli(
        "check-config", "-c", str(cfg), "--connect", "--timeout", "3", env=DEVICE_ENV
    )
    assert code == 1, out + err
    row = parse_table(out)[("room-1", "connect")]
    assert row.startswith("FAIL") and f"the port speaks TLS: use {tls_url}" in row, row
    assert "NetworkServices Websocket" not in row


async def test_a_plain_http_server_still_gets_the_websocket_hint(tmp_path: Path) -> None:
    """The TLS probe does not turn every failed upgrade into "use wss://"."""
    async with WebhookReceiver() as rx:  # an HTTP server with no /ws
        body = DEFAULTS + f'[[devices]]\nid = "room-1"\nurl = "ws://127.0.0.1:{rx.port}/ws"\n'
        cfg = write_config(tmp_path, body + WEBHOOK_ONLY.format(url=rx.url))
        code, out, err = await acli("check-config", "-c", str(cfg), "--connect", env=DEVICE_ENV)
        row = parse_table(out)[("room-1", "connect")]
        assert code == 1 and "NetworkServices Websocket" in row and "wss://" not in row, row


# -- store, API and trust: without --connect -----------------------------------------------------


def test_a_store_directory_that_does_not_exist_fails(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'site = "hq"\n[store]\npath = "{tmp_path}/nope/agent.db"\n'
        + WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook")
    )
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 78, r.stdout + r.stderr
    assert f"store.path: the directory of {tmp_path}/nope/agent.db does not exist" in r.stderr
    (tmp_path / "nope").mkdir()
    r = cli("check-config", "-c", str(cfg), env=ENV)
    assert r.returncode == 0 and "store.path" not in r.stdout + r.stderr, r.stderr


def test_an_exposed_api_and_insecure_warn_and_exit_0(tmp_path: Path) -> None:
    body = DEFAULTS + '[[devices]]\nid = "room-1"\nhost = "127.0.0.1"\ninsecure = true\n'
    body += '[[devices]]\nid = "room-2"\nhost = "127.0.0.2"\n'
    body += WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook")
    body += '[api]\nlisten = "0.0.0.0:9780"\ntoken_env = "API_TOKEN"\n'
    env = DEVICE_ENV | {"API_TOKEN": "t0ken-4-the-api-0123456789abcdef"}
    r = cli("check-config", "-c", str(write_config(tmp_path, body)), env=env)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, r.stdout
    assert warnings[0].startswith(
        "warning: api.listen: '0.0.0.0:9780' serves the local API beyond this machine over "
        "plain HTTP: the bearer token"
    ), warnings[0]
    assert warnings[1].startswith("warning: devices[room-1].insecure: true: ")
    assert "edge-agent trust room-1" in warnings[1]


def test_a_loopback_api_and_verified_devices_give_no_warning(tmp_path: Path) -> None:
    body = DEFAULTS + '[[devices]]\nid = "room-1"\nhost = "127.0.0.1"\n'
    body += WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook") + '[api]\nlisten = "[::1]:9780"\n'
    r = cli("check-config", "-c", str(write_config(tmp_path, body)), env=DEVICE_ENV)
    assert r.returncode == 0 and "warning" not in r.stdout + r.stderr, r.stdout + r.stderr


# -- --failures-only -----------------------------------------------------------------------------


async def test_failures_only_prints_the_rows_that_did_not_pass(
    tmp_path: Path, fleet: object
) -> None:
    good, bad = (d.url for d in fleet.devices)  # type: ignore[attr-defined]
    body = DEFAULTS + f'[[devices]]\nid = "good"\nurl = "{good}"\ninsecure = true\n'
    body += f'[[devices]]\nid = "bad"\nurl = "{bad}"\ninsecure = true\npassword_env = "WRONG"\n'
    cfg = write_config(tmp_path, body + WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook"))
    env = DEVICE_ENV | {"WRONG": "nope"}
    code, full, err = await acli(
        "check-config", "-c", str(cfg), "--connect", "--timeout", "3", env=env
    )
    assert code == 1, full + err
    code, out, err = await acli(
        "check-config", "-c", str(cfg), "--connect", "--failures-only", "--timeout", "3", env=env
    )
    assert code == 1, out + err
    rows = parse_table(out)
    assert set(rows) == {("bad", "connect"), ("webhook", "reach")}, out
    assert all(v.startswith("FAIL") for v in rows.values())
    summary = [line for line in full.splitlines() if " passed, " in line]
    assert summary and summary[-1] in out  # the same counts as the full run


async def test_failures_only_with_nothing_failing_prints_the_summary(tmp_path: Path) -> None:
    async with WebhookReceiver() as rx:
        cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url=rx.url))
        code, out, err = await acli(
            "check-config", "-c", str(cfg), "--connect", "--failures-only", env=ENV
        )
        assert code == 0, out + err
        assert "TARGET" not in out and "2 passed, 0 warning(s), 0 failed" in out


# -- the store the CLI looks for is the agent's -------------------------------------------------


def test_the_store_default_is_the_agents(tmp_path: Path) -> None:
    """Before: without $STATE_DIRECTORY (an admin's shell) the CLI took ./edge-agent.db while the
    agent, under systemd, used /var/lib/edge-agent/agent.db."""
    from edge_agent.config.models import LOCAL_STORE_PATH, default_store_path

    unit_store = tmp_path / "var-lib-edge-agent" / "agent.db"
    state = {"STATE_DIRECTORY": f"{tmp_path}/state:/other"}
    assert default_store_path(state, unit_store) == tmp_path / "state" / "agent.db"
    assert default_store_path({}, unit_store) == LOCAL_STORE_PATH  # no unit store here
    unit_store.parent.mkdir()
    unit_store.touch()
    assert default_store_path({}, unit_store) == unit_store  # the shell finds the unit's store
    assert default_store_path(state, unit_store) == tmp_path / "state" / "agent.db"


@pytest.mark.skipif(
    Path("/var/lib/edge-agent/agent.db").exists(), reason="this machine runs an agent"
)
def test_no_store_found_says_what_was_tried(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.ops.test_cli import cli_env

    cfg = tmp_path / "agent.toml"
    cfg.write_text('site = "hq"\n' + WEBHOOK_ONLY.format(url="http://127.0.0.1:9/hook"))
    env = cli_env(ENV)
    env.pop("STATE_DIRECTORY", None)  # an admin's shell
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "outbox", "dead-letter", "list", "-c", str(cfg)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no store at edge-agent.db" in r.stderr
    assert (
        "store.path is not set, $STATE_DIRECTORY is not set, /var/lib/edge-agent/agent.db does "
        "not exist; so ./edge-agent.db in the working directory"
    ) in r.stderr, r.stderr
