"""Configuration that used to pass ``check-config`` and then break ``run`` (issue 10, item 7).

Each case runs the real CLI (``python -m edge_agent``) as a subprocess: both ``check-config``
and ``run`` must exit 78 (``EX_CONFIG``, which the unit's ``RestartPreventExitStatus=`` does not
restart) naming the key, without a traceback. The agent never reaches a device or a sink here:
the addresses are loopback ports nobody listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 30.0
"""A ``run`` that has not exited by then kept running on a bad config (the bug)."""


def edge_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full.update({"DEVICE_PW": "pw", "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    full.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-m", "edge_agent", *args],
            check=False,
            capture_output=True,
            text=True,
            env=full,
            timeout=RUN_TIMEOUT_S,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"edge-agent {' '.join(args)} did not exit on a bad config: {exc.stderr!r}")


def config(tmp_path: Path, *, devices: str = "", webhook: str = "", extra: str = "") -> Path:
    """A config whose only problem is what the test puts in."""
    hook = webhook or f'url = "http://127.0.0.1:{free_port()}/hook"'
    body = (
        f'site = "hq"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
        f'[defaults]\npassword_env = "DEVICE_PW"\n'
        f'{devices}\n[webhook]\n{hook}\nsecret_env = "WEBHOOK_SECRET"\n'
        f'{extra}\n[api]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    if "[api]" in extra:
        body = body.rsplit("[api]", 1)[0]
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


def assert_exit_78(
    path: Path, key: str, *, commands: tuple[str, ...] = ("check-config", "run")
) -> None:
    for command in commands:
        r = edge_agent(command, "-c", str(path))
        assert r.returncode == 78, (command, r.returncode, r.stderr)
        assert key in r.stderr, (command, key, r.stderr)
        assert "Traceback" not in r.stderr, (command, r.stderr)


# --- secrets -----------------------------------------------------------------------------------


def test_a_password_file_that_is_not_utf8(tmp_path: Path) -> None:
    secret = tmp_path / "device.pw"
    secret.write_bytes(b"\xff\xfe\x80not utf-8\n")
    path = config(tmp_path)
    path.write_text(
        path.read_text().replace('password_env = "DEVICE_PW"', f'password_file = "{secret}"')
        + '[[devices]]\nid = "room-1"\nurl = "ws://127.0.0.1:1/ws"\n'
    )
    assert_exit_78(path, "defaults.password_file")


# --- ports and addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "key"),
    [
        ('host = "127.0.0.1:99999"', "devices[0].host"),
        ('url = "ws://127.0.0.1:99999/ws"', "devices[0].url"),
        ('url = "wss://127.0.0.1:0/ws"', "devices[0].url"),
    ],
)
def test_a_device_port_out_of_range(tmp_path: Path, device: str, key: str) -> None:
    assert_exit_78(config(tmp_path, devices=f'[[devices]]\nid = "room-1"\n{device}\n'), key)


def test_a_webhook_port_out_of_range(tmp_path: Path) -> None:
    assert_exit_78(config(tmp_path, webhook='url = "http://127.0.0.1:99999/hook"'), "webhook.url")


def test_a_listen_host_that_is_not_an_address(tmp_path: Path) -> None:
    path = config(tmp_path, extra='[api]\nlisten = "no-such-host.invalid:9780"\n')
    assert_exit_78(path, "api.listen")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_an_api_port_in_use_exits_78_at_run(tmp_path: Path, taken_port: int) -> None:
    # check-config cannot know (the agent itself holds the port while it runs); run must not
    # crash-loop under systemd on it.
    path = config(tmp_path, extra=f'[api]\nlisten = "127.0.0.1:{taken_port}"\n')
    assert edge_agent("check-config", "-c", str(path)).returncode == 0
    assert_exit_78(path, "api.listen", commands=("run",))
    r = edge_agent("run", "-c", str(path))
    assert len([line for line in r.stderr.splitlines() if "api.listen" in line]) == 1


def test_a_listen_address_not_of_this_machine_exits_78_at_run(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine, so bind fails
    # (EADDRNOTAVAIL) without any packet leaving.
    # Off loopback the API needs a token (else the config is refused before any bind).
    token = tmp_path / "api.token"
    token.write_text("t" * 32)
    extra = f'[api]\nlisten = "192.0.2.1:9780"\ntoken_file = "{token}"\n'
    path = config(tmp_path, extra=extra)
    assert_exit_78(path, "api.listen", commands=("run",))


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "1e-9", "1e9"])
def test_a_webhook_timeout_out_of_range(tmp_path: Path, value: str) -> None:
    hook = f'url = "http://127.0.0.1:{free_port()}/hook"\ntimeout_s = {value}'
    assert_exit_78(config(tmp_path, webhook=hook), "webhook.timeout_s")


@pytest.mark.parametrize("value", ["1e-9", "inf"])
def test_a_health_interval_out_of_range(tmp_path: Path, value: str) -> None:
    mqtt = f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\nhealth_interval_s = {value}\n'
    assert_exit_78(config(tmp_path, extra=mqtt), "mqtt.health_interval_s")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("request_timeout_s", "1e-9"),
        ("request_timeout_s", "inf"),
        ("relist_interval_s", "inf"),
        ("request_grace_s", "nan"),
    ],
)
def test_device_timings_out_of_range(tmp_path: Path, key: str, value: str) -> None:
    path = config(tmp_path)
    path.write_text(
        path.read_text().replace(
            'password_env = "DEVICE_PW"\n', f'password_env = "DEVICE_PW"\n{key} = {value}\n'
        )
    )
    assert_exit_78(path, f"defaults.{key}")


# --- one device twice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        ('url = "ws://127.0.0.1:1/ws"', 'url = "ws://127.0.0.1:1/ws"', "devices[1].url"),
        ('host = "127.0.0.1"', 'url = "wss://127.0.0.1/ws"', "devices[1].url"),
        ('url = "wss://Room.Example:443/ws"', 'host = "room.example"', "devices[1].host"),
    ],
)
def test_the_same_device_twice(tmp_path: Path, first: str, second: str, key: str) -> None:
    devices = f'[[devices]]\nid = "a"\n{first}\n[[devices]]\nid = "b"\n{second}\n'
    path = config(tmp_path, devices=devices)
    assert_exit_78(path, key)
    assert "the same device as devices[0]" in edge_agent("check-config", "-c", str(path)).stderr
