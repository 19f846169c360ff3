"""SIGHUP and the keys outside the device list (issue 15): the log level applies live, the MQTT
credentials too; every other changed key is named in one warning as needing a restart, instead
of being ignored silently."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from edge_agent.config import Secrets, config_from_dict
from edge_agent.config.diff import changed_keys, changed_secrets
from tests.mosquitto import free_port
from tests.ops.test_cli import ENV, WEBHOOK_ONLY, WHSEC, cli_env

BASE: dict[str, Any] = {
    "site": "hq",
    "store": {"path": "/tmp/agent.db"},
    "defaults": {"password_env": "PW"},
    "devices": [{"id": "room-1", "host": "127.0.0.1"}],
    "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "WH"},
    "log": {"level": "info"},
}


def cfg(**sections: Any) -> Any:
    return config_from_dict({**BASE, **sections}, env={"PW": "pw", "WH": WHSEC})


def test_changed_keys_name_each_key_outside_the_devices() -> None:
    old = cfg()
    assert changed_keys(old, cfg()) == []
    new = cfg(
        log={"level": "debug"},
        api={"listen": "127.0.0.1:9999"},
        webhook={"url": "https://hooks.example/x", "secret_env": "WH", "timeout_s": 5},
        devices=[{"id": "room-2", "host": "127.0.0.2"}],  # the per-device diff's business
        defaults={"password_env": "PW", "time_zone": "Europe/Oslo"},
    )
    assert changed_keys(old, new) == ["api.listen", "log.level", "webhook.timeout_s", "webhook.url"]
    mqtt = cfg(mqtt={"url": "mqtt://127.0.0.1:1883"})
    assert changed_keys(old, mqtt) == ["mqtt"]  # a section added: its name
    assert changed_keys(mqtt, old) == ["mqtt"]


def test_changed_secrets_compare_values_and_name_no_value() -> None:
    a = Secrets(webhook_secrets=[SecretStr("whsec_a")], mqtt_password=SecretStr("m1"))
    assert changed_secrets(a, a) == []
    b = Secrets(
        webhook_secrets=[SecretStr("whsec_b")],
        mqtt_password=SecretStr("m2"),
        api_tokens=[SecretStr("t")],
    )
    assert changed_secrets(a, b) == ["webhook secret", "mqtt password", "api tokens"]


async def test_sighup_applies_the_log_level_and_names_what_needs_a_restart(
    tmp_path: Path,
) -> None:
    """Before: a changed [webhook] url, [api] listen or [log] level was silently ignored."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    api_port, new_port = free_port(), free_port()
    config = tmp_path / "agent.toml"

    def write(url: str, port: int, level: str) -> None:
        config.write_text(
            f'site = "hq"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
            f'[api]\nlisten = "127.0.0.1:{port}"\n[log]\nlevel = "{level}"\n'
            + WEBHOOK_ONLY.format(url=url)
        )

    write("http://127.0.0.1:9/hook", api_port, "info")
    env = cli_env(ENV | {"NOTIFY_SOCKET": str(notify.getsockname())})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "run", "-c", str(config),
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
        assert await next_notify("READY=1")
        write("http://127.0.0.1:10/other", new_port, "warning")
        proc.send_signal(signal.SIGHUP)
        assert await next_notify("RELOADING=1")
        assert await next_notify("READY=1")
        async with httpx.AsyncClient(timeout=5) as http:  # the running listen is kept
            assert (await http.get(f"http://127.0.0.1:{api_port}/healthz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err_b = await proc.communicate()
        assert proc.returncode == 0, err_b.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    lines = [json.loads(x) for x in err_b.decode().splitlines() if x.startswith("{")]
    events = [x["event"] for x in lines]
    [warning] = [x for x in lines if "take effect only after a restart" in x["event"]]
    assert warning["level"] == "warning"
    assert warning["keys"] == ["api.listen", "webhook.url"]
    assert "http://127.0.0.1:10/other" not in json.dumps(warning)  # key names, not values
    # The level applied live: info lines before the reload, none after it (warning and up).
    at = events.index(warning["event"])
    assert any(x["level"] == "info" for x in lines[:at])
    assert [x for x in lines[at:] if x["level"] in ("info", "debug")] == []
    assert "configuration reloaded" not in events  # logged at info, after the new level
