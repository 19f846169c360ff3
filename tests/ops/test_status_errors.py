"""Last errors with their time: the MQTT sink's connection errors, ``/v1/sinks``, and
``edge-agent status`` (ERROR AT; a recovered error marked as past)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.clock import parse_utc
from edge_agent.forward.mqtt import MqttSink
from edge_agent.ops.api import LocalApi
from edge_agent.ops.cli.status import error_cells, print_status
from tests.forward.test_mqtt import FAST, running, until
from tests.mosquitto import Mosquitto, free_port
from tests.ops.test_cli import acli

T_ERR = "2026-11-23T08:00:00.000Z"
T_OLD = "2026-11-23T07:00:00.000Z"


async def test_mqtt_connection_errors_carry_their_time_and_become_past_on_recovery(
    tmp_path: Path,
) -> None:
    port = free_port()
    sink = MqttSink(f"mqtt://127.0.0.1:{port}", site="hq", **FAST)
    async with running(sink, wait_ready=False):
        await until(lambda: sink.stats.last_error is not None, what="the refusal")
        assert sink.stats.last_error_at is not None
        assert "127.0.0.1" in (sink.stats.last_error or "")
        failed_at = parse_utc(sink.stats.last_error_at)
        with Mosquitto(tmp_path, port=port):
            await until(sink.ready, timeout=15, what="connected once the broker is up")
            st = sink.stats
            assert st.last_error is None and st.last_error_at is None
            assert st.previous_error is not None and st.previous_error_at is not None
            assert parse_utc(st.previous_error_at) >= failed_at
        # The broker went away with the link up: the loss is the new last error, timed.
        await until(lambda: sink.stats.last_error is not None, timeout=15, what="the loss")
        assert sink.stats.last_error_at is not None
        assert parse_utc(sink.stats.last_error_at) >= parse_utc(st.previous_error_at)


@dataclass
class View:
    """An agent as the local API sees it: one device failing, one recovered; two sinks."""

    store: Any = None

    def devices(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "room-4a",
                "connected": False,
                "down_since": T_ERR,
                "last_seen": "2026-11-23T07:59:58.000Z",
                "last_error": "room-4a: device refused the credentials (HTTP 403)",
                "last_error_at": T_ERR,
            },
            {
                "id": "room-4b",
                "connected": True,
                "connected_since": T_ERR,
                "last_seen": T_ERR,
                "last_error": None,
                "previous_error": "room-4b: connection refused",
                "previous_error_at": T_OLD,
            },
        ]

    def sinks(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "mqtt",
                "state": "running",
                "ready": False,
                "last_error": "mqtt: broker 127.0.0.1:1883 refused the connection",
                "last_error_at": T_ERR,
            },
            {
                "name": "webhook",
                "state": "running",
                "ready": True,
                "last_error": None,
                "previous_error": "webhook: HTTP 503",
                "previous_error_at": T_OLD,
            },
        ]


def test_error_cells() -> None:
    assert error_cells({"last_error": "x", "last_error_at": T_ERR}) == [T_ERR, "x"]
    assert error_cells({"previous_error": "y", "previous_error_at": T_OLD}) == [
        T_OLD,
        "(recovered) y",
    ]
    assert error_cells({"last_error": None}) == [None, None]


def test_status_tables_show_when_each_error_happened() -> None:
    view = View()
    out = io.StringIO()
    readyz = {"ready": True, "devices": view.devices(), "sinks": view.sinks()}
    print_status("http://127.0.0.1:9780", readyz, None, out)
    lines = out.getvalue().splitlines()
    for table in ("DEVICE", "SINK"):
        header = next(line for line in lines if line.startswith(table))
        assert "ERROR AT" in header and header.index("ERROR AT") < header.index("LAST ERROR")
    row = next(line for line in lines if line.startswith("room-4a"))
    assert T_ERR in row and "HTTP 403" in row and "(recovered)" not in row
    row = next(line for line in lines if line.startswith("room-4b"))
    assert f"{T_OLD}  (recovered) room-4b: connection refused" in row
    row = next(line for line in lines if line.startswith("mqtt"))
    assert f"{T_ERR}  mqtt: broker" in row
    row = next(line for line in lines if line.startswith("webhook"))
    assert "(recovered) webhook: HTTP 503" in row


async def test_v1_sinks_and_the_status_command() -> None:
    import httpx

    async with LocalApi(View(), "127.0.0.1:0") as api:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=api.url) as http:
            body = (await http.get("/v1/sinks")).json()
        mqtt = next(s for s in body["sinks"] if s["name"] == "mqtt")
        assert mqtt["last_error_at"] == T_ERR and mqtt["ready"] is False
        code, out, err = await acli("status", "--api", api.url)
        assert code in (0, 1), err
        assert "ERROR AT" in out and T_ERR in out and "(recovered)" in out
