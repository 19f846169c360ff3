from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from edge_agent.ops.logs import (
    MASK,
    LogLevelError,
    clear_registered_secrets,
    configure_logging,
    redact_text,
    register_secrets,
    resolve_level,
)

REPO = Path(__file__).resolve().parents[2]

PASSWORD = "Pl4nted-Device-Passw0rd"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "tok-3f9a8b7c6d5e4f3a2b1c"
MQTT_PW = "mqtt-Broker-s3cret"
BASIC = "Basic ZWRnZS1hZ2VudDpQbDRudGVkLURldmljZS1QYXNzdzByZA=="
PLANTED = (PASSWORD, WHSEC, TOKEN, MQTT_PW, BASIC.split()[1], "hunter2-in-url")

SCRIPT = textwrap.dedent(
    f"""
    import logging, sys, structlog
    from edge_agent.ops.logs import configure_logging, register_secrets, resolve_level
    mode = sys.argv[1]
    level = resolve_level(sys.argv[2] or None)  # what the CLI does with --log-level
    configure_logging(level, json=None if mode == "auto" else mode == "json")
    register_secrets([{PASSWORD!r}, {MQTT_PW!r}])
    log = structlog.get_logger("edge_agent.test")
    log.debug("connecting", device="room-4a", password={PASSWORD!r}, auth_header={BASIC!r})
    log.info("signing", secret={WHSEC!r}, webhook_secrets=[{WHSEC!r}], token={TOKEN!r})
    log.info("headers", headers={{"Authorization": {BASIC!r}, "X-Other": "fine"}})
    log.warning("broker url", url="mqtt://edge:hunter2-in-url@broker:1883")
    log.info("free text mentions " + {PASSWORD!r} + " and " + {WHSEC!r})
    logging.getLogger("websockets.client").debug("> Authorization: " + {BASIC!r})
    logging.getLogger("aiomqtt").warning("connect failed for password %s", {MQTT_PW!r})
    try:
        raise RuntimeError("device said: bad password " + {PASSWORD!r})
    except RuntimeError:
        log.exception("connect failed", device="room-4a")
        logging.getLogger("httpx").exception("stdlib failure")
    log.info("done", device="room-4a", count=3)
    """
)


def run_script(mode: str, level: str, *, tty: bool = False, env_level: str | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    env.pop("EDGE_AGENT_LOG_LEVEL", None)
    if env_level:
        env["EDGE_AGENT_LOG_LEVEL"] = env_level
    if not tty:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode, level],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        assert proc.stdout == ""
        return proc.stderr
    master, slave = pty.openpty()
    try:
        proc2 = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode, level], stderr=slave, stdout=slave, env=env
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc2.wait(timeout=30) == 0
    finally:
        os.close(master)
    return b"".join(chunks).decode()


def assert_no_secrets(output: str) -> None:
    for secret in PLANTED:
        assert secret not in output, f"{secret!r} leaked:\n{output}"


def test_json_lines_when_not_a_tty() -> None:
    out = run_script("auto", "trace")
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    events = [r["event"] for r in records]
    assert "connecting" in events and "done" in events
    done = records[events.index("done")]
    assert done["level"] == "info" and done["device"] == "room-4a" and done["count"] == 3
    assert done["logger"] == "edge_agent.test" and done["timestamp"].endswith("Z")
    # stdlib loggers go through the same renderer
    stdlib = [r for r in records if r["logger"] in ("websockets.client", "aiomqtt", "httpx")]
    assert len(stdlib) == 3
    assert any("Traceback" in r.get("exception", "") for r in records)
    assert_no_secrets(out)
    assert MASK in out


def test_console_when_a_tty() -> None:
    out = run_script("auto", "debug", tty=True)
    lines = [line for line in out.splitlines() if "done" in line]
    assert lines and "[info" in lines[0] and "device=room-4a" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert "Traceback" in out
    assert_no_secrets(out)


@pytest.mark.parametrize("mode", ["json", "console"])
def test_redaction_every_level_both_renderers(mode: str) -> None:
    out = run_script(mode, "debug")
    assert "connecting" in out and "free text mentions" in out
    assert_no_secrets(out)


def test_level_from_environment_and_flag() -> None:
    quiet = run_script("json", "", env_level="warning")
    assert '"connecting"' not in quiet and '"done"' not in quiet
    assert '"broker url"' in quiet
    flag_wins = run_script("json", "debug", env_level="warning")
    assert '"connecting"' in flag_wins
    default = run_script("json", "")
    assert '"done"' in default and '"connecting"' not in default


def test_resolve_level_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_AGENT_LOG_LEVEL", raising=False)
    assert resolve_level(None, None) == "info"
    assert resolve_level(None, "warning") == "warning"
    monkeypatch.setenv("EDGE_AGENT_LOG_LEVEL", "DEBUG")
    assert resolve_level(None, "warning") == "debug"
    assert resolve_level("error", "warning") == "error"
    monkeypatch.setenv("EDGE_AGENT_LOG_LEVEL", "")
    assert resolve_level(None, "warn") == "warning"
    assert resolve_level("TRACE", None) == "trace"


@pytest.mark.parametrize(
    ("cli_level", "env_level", "config_level", "named"),
    [
        ("verbose", None, None, "--log-level"),
        (None, "verbose", None, "$EDGE_AGENT_LOG_LEVEL"),
        (None, None, "loud", "[log] level"),
    ],
)
def test_resolve_level_refuses_what_is_not_a_level(
    monkeypatch: pytest.MonkeyPatch,
    cli_level: str | None,
    env_level: str | None,
    config_level: str | None,
    named: str,
) -> None:
    """A typo used to give ``info`` silently; now it is an error naming where it came from."""
    monkeypatch.delenv("EDGE_AGENT_LOG_LEVEL", raising=False)
    if env_level is not None:
        monkeypatch.setenv("EDGE_AGENT_LOG_LEVEL", env_level)
    with pytest.raises(LogLevelError) as info:
        resolve_level(cli_level, config_level)
    assert named in str(info.value) and "trace, debug, info, warning" in str(info.value)


def test_websocket_frames_only_at_trace() -> None:
    """``debug`` is the agent's decisions; the websockets frame dump is ``trace`` alone."""
    debug = run_script("json", "debug")
    assert '"connecting"' in debug and '"websockets.client"' not in debug
    trace = run_script("json", "trace")
    assert '"websockets.client"' in trace and '"connecting"' in trace
    assert_no_secrets(trace)
    info = run_script("json", "info")
    assert '"websockets.client"' not in info and '"connecting"' not in info


def test_in_process_stream_and_registered_values() -> None:
    buf = io.StringIO()
    configure_logging("info", stream=buf)  # StringIO is not a TTY: JSON
    try:
        register_secrets(["s3cret-value-xyz", "ab"])  # too short to mask: ignored
        structlog.get_logger("t").info(
            "x",
            note="has s3cret-value-xyz inside",
            nested={"api_key": "k", "ok": ["ab"]},
            password_env="EDGE_AGENT_DEVICE_PASSWORD",
        )
        line = json.loads(buf.getvalue().splitlines()[-1])
        assert line["note"] == f"has {MASK} inside"
        assert line["nested"] == {"api_key": MASK, "ok": ["ab"]}
        # where a secret comes from is not secret
        assert line["password_env"] == "EDGE_AGENT_DEVICE_PASSWORD"
    finally:
        clear_registered_secrets()


def test_redact_text_patterns() -> None:
    assert redact_text("Authorization: Bearer abc.def-ghi") == f"Authorization: Bearer {MASK}"
    assert redact_text("Sec-WebSocket-Protocol: auth-ZWRnZTpwdw") == (
        f"Sec-WebSocket-Protocol: auth-{MASK}"
    )
    assert redact_text("wss://user:pw@10.0.0.1/ws") == f"wss://user:{MASK}@10.0.0.1/ws"
    assert redact_text("wss://10.0.0.1/ws") == "wss://10.0.0.1/ws"
    assert redact_text(f"{WHSEC} {WHSEC}") == f"whsec_{MASK} whsec_{MASK}"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "store at postgresql://edge@db:5432/edge?password=s3cret-pw&sslmode=require",
            f"store at postgresql://edge@db:5432/edge?password={MASK}&sslmode=require",
        ),
        (
            "postgresql://edge@db/edge?sslmode=verify-full&sslpassword=s3cret-pw",
            f"postgresql://edge@db/edge?sslmode=verify-full&sslpassword={MASK}",
        ),
        (
            "url='postgresql://edge@db/edge?passfile=/home/s3cret-pw'",
            f"url='postgresql://edge@db/edge?passfile={MASK}'",
        ),
        (
            "https://hook.example/x?access_token=s3cret-pw#top",
            f"https://hook.example/x?access_token={MASK}#top",
        ),
        (
            "postgresql://edge@db/edge?PASSWORD=s3cret-pw",
            f"postgresql://edge@db/edge?PASSWORD={MASK}",
        ),
    ],
)
def test_redact_text_masks_secret_query_keys_in_urls(text: str, masked: str) -> None:
    assert redact_text(text) == masked


def test_redact_text_keeps_other_query_keys() -> None:
    url = "postgresql://edge@db/edge?sslmode=require&application_name=edge-1&connect_timeout=5"
    assert redact_text(url) == url


def test_a_store_url_with_a_password_query_is_masked_in_a_rendered_line() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    structlog.get_logger("t").info(
        "store", url="postgresql://edge@db/edge?password=s3cret-pw", dsn_list=["x?sslpassword=zz1"]
    )
    out = stream.getvalue()
    assert "s3cret-pw" not in out and "zz1" not in out and MASK in out
