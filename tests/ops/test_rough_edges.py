"""Rough edges a site admin hit (issue 15), each pinned by a test through the real part."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from edge_agent.agent import Agent
from edge_agent.config import config_from_dict, resolve_secrets
from edge_agent.ops.api import LocalApi
from edge_agent.store import Change, Store
from tests.ops.test_cli import (
    WEBHOOK_ONLY,
    RunningAgent,
    cli,
    cli_env,
    make_dead_letters,
    write_config,
)
from tests.receivers import Reply, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def envelope(device: str) -> dict[str, Any]:
    return {
        "type": "booking.created",
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": str(uuid.uuid4()), "site": "hq", "device_id": device},
    }


# --- (b) a gone sink is not ready -------------------------------------------------------------


async def test_gone_sink_is_not_ready_in_readyz(tmp_path: Path) -> None:
    """The webhook answered 410: /readyz said 503 "sink webhook is gone" yet listed the sink
    with ``ready: true`` (its HTTP pool was fine). A sink that never delivers again is not
    ready."""
    async with WebhookReceiver(secret=WHSEC) as rx:
        rx.default = Reply(410)
        raw = {
            "site": "hq",
            "store": {"path": str(tmp_path / "agent.db")},
            "webhook": {"url": rx.url, "secret_env": "WH"},
            "api": {"listen": "127.0.0.1:0"},
        }
        env = {"WH": WHSEC}
        cfg = config_from_dict(raw, env=env)
        agent = Agent(cfg, resolve_secrets(cfg, env=env), drain_timeout_s=0.5)
        task = asyncio.create_task(agent.run(), name="test-agent")
        try:
            await asyncio.wait_for(agent.ready.wait(), 20)
            assert agent.store is not None and agent.api is not None
            await agent.store.commit(Change("room-4a", events=[envelope("room-4a")]))
            async with asyncio.timeout(15):
                while agent.sinks()[0]["state"] != "gone":
                    await asyncio.sleep(0.02)
            assert agent.sinks()[0]["ready"] is False
            async with httpx.AsyncClient(base_url=agent.api.url) as http:
                r = await http.get("/readyz")
            assert r.status_code == 503
            body = r.json()
            assert "sink webhook is gone" in body["reasons"]
            assert body["sinks"][0]["state"] == "gone" and body["sinks"][0]["ready"] is False
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 30)


async def test_readyz_never_lists_a_gone_sink_as_ready(tmp_path: Path) -> None:
    """The API holds the rule too, whatever view of the agent it is given."""

    class GoneView(RunningAgent):
        def sinks(self) -> list[dict[str, Any]]:
            return [{"name": "webhook", "state": "gone", "ready": True, "last_error": "410"}]

    store = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    try:
        async with (
            LocalApi(GoneView(store), "127.0.0.1:0") as api,
            httpx.AsyncClient(base_url=api.url) as http,
        ):
            r = await http.get("/readyz")
        assert r.status_code == 503 and r.json()["sinks"][0]["ready"] is False
    finally:
        await store.close()


# --- (c) a closed pipe is not a traceback -----------------------------------------------------


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reader is gone before it writes (`... | head`
    after head exited): every write raises EPIPE, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "edge_agent", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=cli_env(),
            cwd=REPO,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


async def test_status_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    try:
        async with LocalApi(RunningAgent(store), "127.0.0.1:0") as api:
            proc = await asyncio.to_thread(_into_closed_pipe, "status", "--api", api.url)
    finally:
        await store.close()
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == 128 + 13


def test_help_and_completion_into_a_closed_pipe() -> None:
    proc = _into_closed_pipe("completion", "bash")
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == 128 + 13
    proc = _into_closed_pipe("--help")  # argparse swallows the error itself: exit 0
    assert proc.stderr == b"", proc.stderr.decode()


# --- (d) a log level that is not one is refused -----------------------------------------------


def test_unknown_log_level_in_the_environment_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url="https://example.invalid/hook"))
    r = cli("check-config", "-c", str(cfg), env={"EDGE_AGENT_LOG_LEVEL": "verbose"})
    assert r.returncode == 78, r.stdout + r.stderr
    assert "EDGE_AGENT_LOG_LEVEL" in r.stderr and "'verbose'" in r.stderr
    assert "trace, debug, info" in r.stderr and "Traceback" not in r.stderr
    env = {"EDGE_AGENT_LOG_LEVEL": "trace", "EDGE_AGENT_WEBHOOK_SECRET": WHSEC}
    r = cli("check-config", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stderr


# --- (f) replaying what does not exist fails --------------------------------------------------


async def test_dead_letter_replay_of_an_unknown_id_exits_non_zero(tmp_path: Path) -> None:
    await make_dead_letters(tmp_path / "agent.db", 2)
    cfg = write_config(tmp_path, WEBHOOK_ONLY.format(url="https://example.invalid/hook"))
    c = ["-c", str(cfg)]
    r = await asyncio.to_thread(cli, "outbox", "dead-letter", "replay", *c, "--id", "999")
    assert r.returncode == 1 and "0 of 1 dead letter id(s) matched" in r.stderr, r.stderr
    assert "replayed 0 " in r.stdout
    r = await asyncio.to_thread(cli, "outbox", "dead-letter", "purge", *c, "--id", "999")
    assert r.returncode == 1 and "0 of 1" in r.stderr
    r = await asyncio.to_thread(cli, "outbox", "dead-letter", "list", *c, "--json")
    ids = [line.split('"id":')[1].split(",")[0] for line in r.stdout.splitlines()]
    assert len(ids) == 2  # nothing was touched
    r = await asyncio.to_thread(
        cli, "outbox", "dead-letter", "replay", *c, "--id", ids[0], "--id", "999"
    )
    assert r.returncode == 1 and "1 of 2 dead letter id(s) matched" in r.stderr
    r = await asyncio.to_thread(cli, "outbox", "dead-letter", "replay", *c, "--id", ids[1])
    assert r.returncode == 0 and "replayed 1 " in r.stdout, r.stderr


# --- (g) a secret file others can read is named -----------------------------------------------


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o606, True), (0o600, False)])
def test_world_readable_secret_file_is_warned_about(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    secret = tmp_path / "webhook-secret"
    secret.write_text(WHSEC + "\n")
    secret.chmod(mode)
    raw = {
        "site": "hq",
        "webhook": {"url": "https://example.invalid/hook", "secret_file": str(secret)},
    }
    cfg = config_from_dict(raw, env={})
    with structlog.testing.capture_logs() as logs:
        secrets = resolve_secrets(cfg, env={})
    assert secrets.webhook_secrets[0].get_secret_value() == WHSEC  # still read: a warning only
    warnings = [e for e in logs if e["log_level"] == "warning"]
    if warned:
        assert len(warnings) == 1, logs
        assert str(secret) in warnings[0]["event"] and "chmod 600" in warnings[0]["event"]
        assert warnings[0]["key"] == "webhook.secret_file"
        assert WHSEC not in repr(logs)
    else:
        assert warnings == []


# --- (h) device-sim works with the agent's defaults, and says its own -------------------------


def test_device_sim_defaults_to_the_agents_user_and_shows_defaults() -> None:
    from device_sim.cli import build_parser, config_from_args
    from edge_agent.config.models import DeviceDefaults

    parser = build_parser()
    args = parser.parse_args([])
    assert args.user == DeviceDefaults().username == "edge-agent"
    assert config_from_args(args).username == "edge-agent"
    env = dict(cli_env(), DEVICE_SIM_PASSWORD="from-env-s3cret", COLUMNS="200")
    r = subprocess.run(
        [sys.executable, "-m", "device_sim", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert "(default: edge-agent)" in r.stdout and "(default: 8443)" in r.stdout
    assert "from-env-s3cret" not in r.stdout  # the password's default is not printed
    assert "$DEVICE_SIM_PASSWORD" in r.stdout
