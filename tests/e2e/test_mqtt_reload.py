"""SIGHUP after fixing the MQTT password: the agent's sink reconnects at once (issue 10, 9a)."""

from __future__ import annotations

import asyncio

import structlog

from tests.e2e.harness import agent_config, eventually, start_agent
from tests.forward.test_mqtt_close import SilentBroker
from tests.mosquitto import Mosquitto, make_password_file


def toml_for(fleet, tmp_path, ca_file, receiver, broker, password_file) -> str:
    d = fleet.devices
    return (
        f'site = "test"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
        f'[defaults]\nusername = "{fleet.config.username}"\npassword_env = "SIM_PASSWORD"\n'
        f'ca_file = "{ca_file}"\nbooking_timeout_s = 60\nrequest_grace_s = 5\n'
        f"relist_interval_s = 300\nrequest_timeout_s = 5\n"
        f'[[devices]]\nid = "{d[0].device_id}"\nurl = "{d[0].url}"\n'
        f'[webhook]\nurl = "{receiver.url}"\nsecret_env = "WEBHOOK_SECRET"\ntimeout_s = 5\n'
        f'[mqtt]\nurl = "{broker.url}"\nusername = "edge"\npassword_file = "{password_file}"\n'
        f'[api]\nlisten = "127.0.0.1:0"\n'
    )


async def test_reload_after_fixing_the_password_file_reconnects_at_once(
    make_fleet, receiver, tmp_path, ca_file, env, monkeypatch
):
    fleet = await make_fleet(mode="hybrid", devices=1)
    users = make_password_file(tmp_path, {"edge": "right-password"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong-password\n")
    with Mosquitto(tmp_path, password_file=users) as broker:
        mqtt = {"url": broker.url, "username": "edge", "password_file": str(secret)}
        cfg = agent_config(
            fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file, extra={"mqtt": mqtt}
        )
        running = await start_agent(cfg, fleet, env=env)
        agent = running.agent
        try:
            sink = next(s for s, _ in agent._sinks if s.name == "mqtt")
            await eventually(lambda: sink.last_error, what="the refusal")
            error = sink.last_error or ""
            # (b) the hint names what is configured, not password_env
            assert f"check [mqtt] username and password_file {secret} in the config" in error
            assert "password_env" not in error
            secret.write_text("right-password\n")
            toml = tmp_path / "agent.toml"
            toml.write_text(toml_for(fleet, tmp_path, ca_file, receiver, broker, secret))
            agent._config_path = toml
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            with structlog.testing.capture_logs() as logs:
                agent.request_reload()
                await eventually(sink.ready, what="the sink connected after the reload")
            # connected because the reload cut the refused backoff short, with the new password
            assert any(e["event"] == "mqtt: reconnecting now (reload)" for e in logs), logs
        finally:
            await running.stop()


async def test_stop_while_the_broker_is_silent_or_refusing_ends_the_agent(
    make_fleet, receiver, tmp_path, ca_file, env
):
    """Shut down mid-connect (a broker that accepts and never answers) and mid-reconnect (one
    that refuses the password): the sink's loop and the request mirror both end, so the agent
    stops within its bounded drain instead of waiting for a connect timeout, or for ever."""
    fleet = await make_fleet(mode="hybrid", devices=1)
    async with SilentBroker() as silent:
        cfg = agent_config(
            fleet,
            tmp_path,
            webhook_url=receiver.url,
            ca_file=ca_file,
            extra={"mqtt": {"url": silent.url}},
        )
        running = await start_agent(cfg, fleet, env=env)
        await asyncio.wait_for(silent.accepted.wait(), 10)
        assert await asyncio.wait_for(running.stop(), 20) == 0
        await asyncio.wait_for(silent.closed_by_peer.wait(), 10)

    users = make_password_file(tmp_path, {"edge": "right-password"})
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong-password\n")
    with Mosquitto(tmp_path, password_file=users) as broker:
        mqtt = {"url": broker.url, "username": "edge", "password_file": str(secret)}
        cfg = agent_config(
            fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file, extra={"mqtt": mqtt}
        )
        running = await start_agent(cfg, fleet, env=env)
        sink = next(s for s, _ in running.agent._sinks if s.name == "mqtt")
        await eventually(lambda: sink.last_error, what="the refusal")
        assert await asyncio.wait_for(running.stop(), 20) == 0
