"""sd_notify against a real datagram socket, and the unit file through systemd-analyze."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.ops import sdnotify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


# ---------------------------------------------------------------------------------------------
# sd_notify
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
        monkeypatch.setenv("NOTIFY_SOCKET", addr)
    else:
        name = f"edge-agent-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.settimeout(2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notify_messages(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("3 devices connected")
    assert received(notify_socket) == "READY=1\nSTATUS=3 devices connected"
    assert sdnotify.status("2/3 devices\nconnected")
    assert received(notify_socket) == "STATUS=2/3 devices connected"
    assert sdnotify.watchdog()
    assert received(notify_socket) == "WATCHDOG=1"
    assert sdnotify.stopping()
    assert received(notify_socket) == "STOPPING=1"
    assert sdnotify.reloading()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", received(notify_socket))


def test_noop_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.watchdog_interval({}) is None


def test_send_failure_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 2.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


async def test_watchdog_loop_pings_only_while_healthy(notify_socket: socket.socket) -> None:
    notify_socket.setblocking(False)
    healthy = True
    task = asyncio.create_task(sdnotify.watchdog_loop(lambda: healthy, interval=0.1))
    try:
        await asyncio.sleep(0.33)  # pings at ~0.05 s intervals
        pings = _drain(notify_socket)
        assert pings.count("WATCHDOG=1") >= 3
        healthy = False
        await asyncio.sleep(0.06)
        _drain(notify_socket)
        await asyncio.sleep(0.2)
        assert _drain(notify_socket) == []
        healthy = True
        await asyncio.sleep(0.15)
        assert "WATCHDOG=1" in _drain(notify_socket)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_still_pings_after_a_blocked_loop(
    notify_socket: socket.socket,
) -> None:
    """A late tick proves the loop turns again; skipping it would turn one stall of a quarter
    of the interval into a restart by systemd."""
    import time

    notify_socket.setblocking(False)
    task = asyncio.create_task(sdnotify.watchdog_loop(lambda: True, interval=0.2))
    try:
        await asyncio.sleep(0.01)
        time.sleep(0.25)  # noqa: ASYNC251 - blocking the event loop past the tick is the test
        await asyncio.sleep(0.01)
        assert _drain(notify_socket) == ["WATCHDOG=1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_returns_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.watchdog_loop(lambda: True), 1)


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


# ---------------------------------------------------------------------------------------------
# The unit file
# ---------------------------------------------------------------------------------------------

needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (CI installs systemd)"
)


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_contract() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [
        "/opt/edge-agent/.venv/bin/edge-agent run -c /etc/edge-agent/agent.toml"
    ]
    assert s["WatchdogSec"] == ["30"] and s["Restart"] == ["on-failure"]
    assert s["StateDirectory"] == ["edge-agent"] and s["ConfigurationDirectory"] == ["edge-agent"]
    creds = {c.split(":")[0] for c in s["LoadCredential"]}
    assert creds == {"device-password", "webhook-secret", "mqtt-password"}
    # Every one optional: a site without MQTT (or webhook) has no such file.
    assert optional_credentials(s) == creds
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["DynamicUser"] == ["yes"]
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s  # the agent needs the network


def optional_credentials(settings: dict[str, list[str]]) -> set[str]:
    """Credential IDs whose missing file does not stop the unit: systemd.exec(5), 252: "If a
    credential of the same ID is listed in both LoadCredential= and SetCredential=, the latter
    will act as default if the former cannot be retrieved ... not considered fatal"."""
    loaded = {c.split(":")[0] for c in settings.get("LoadCredential", [])}
    fallback = {c.split(":")[0] for c in settings.get("SetCredential", [])}
    return loaded & fallback


def test_a_missing_credential_file_does_not_stop_the_unit() -> None:
    """The unit's LoadCredential=mqtt-password was unconditional: a site without MQTT got a
    unit that could not start. Each credential now has a SetCredential= fallback, and that
    fallback holds no secret (SetCredential= values are visible over D-Bus)."""
    s = unit_settings()
    for entry in s["SetCredential"]:
        _ident, value = entry.split(":", 1)
        assert value == "\\n", entry  # a lone newline: systemd refuses an empty value
    assert optional_credentials(s) == {c.split(":")[0] for c in s["LoadCredential"]}


def test_the_fallback_credential_is_refused_naming_the_file_to_create(tmp_path: Path) -> None:
    """What the agent makes of the fallback (a lone newline) when its config names it."""
    from edge_agent.config import ConfigError, config_from_dict, resolve_secrets

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("\n")  # what SetCredential=mqtt-password:\n gives
    raw = {
        "site": "hq",
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "password_file": "mqtt-password"},
    }
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    cfg = config_from_dict(raw, env=env)
    with pytest.raises(ConfigError) as info:
        resolve_secrets(cfg, env=env)
    text = "\n".join(info.value.lines())
    assert "mqtt.password_file" in text and "/etc/edge-agent/credentials/mqtt-password" in text
    # A site that does not use MQTT never reads it.
    assert resolve_secrets(config_from_dict({"site": "hq"}, env=env), env=env).mqtt_password is None


@needs_analyze
def test_security_exposure_ok() -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout
    assert match.group(2) == "OK"
    assert proc.returncode == 0, proc.stdout + proc.stderr  # --threshold=20 means <= 2.0


@needs_analyze
def test_verify_clean(tmp_path: Path) -> None:
    # `verify` insists the ExecStart binary exists. The real path (/opt/edge-agent/.venv) is not
    # on a test machine, so verify a copy whose ExecStart runs this interpreter instead.
    assert SYSTEMD_ANALYZE is not None
    copy = tmp_path / "edge-agent.service"
    copy.write_text(
        UNIT.read_text().replace(
            "/opt/edge-agent/.venv/bin/edge-agent", f"{sys.executable} -m edge_agent"
        )
    )
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
