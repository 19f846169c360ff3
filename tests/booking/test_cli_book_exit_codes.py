"""``edge-agent book`` / ``release`` exit codes (README "Commands"): 0 done, 1 refused, 69 no
agent, 75 not now (503, or still undecided when ``--wait`` gives up), 78 no token source (found
before anything is sent). The CLI runs as a real process against a scripted local API on
127.0.0.1 that answers what each case needs and records what it was sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.booking.conftest import TOKEN
from tests.ops.test_cli import acli

UUID = "0193e4a8-0000-7000-8000-000000000001"


@dataclass
class ScriptedApi:
    """Answers POST/DELETE with ``answer``, and GET /v1/requests/{uuid} with ``statuses`` in
    turn (the last one repeated)."""

    answer: tuple[int, dict[str, Any]] = (202, {"request_uuid": UUID, "status": "pending"})
    statuses: list[dict[str, Any]] = field(default_factory=list)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    async def change(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        status, body = self.answer
        if request.method == "DELETE" and status == 202:
            body = {"status": "releasing"}
        return web.json_response(body, status=status)

    async def follow(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        body = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.json_response({"request_uuid": UUID, **body})


@pytest.fixture
async def api() -> AsyncIterator[ScriptedApi]:
    scripted = ScriptedApi()
    app = web.Application()
    app.router.add_post("/v1/rooms/{room}/bookings", scripted.change)
    app.router.add_delete("/v1/rooms/{room}/bookings/{id}", scripted.change)
    app.router.add_get("/v1/requests/{uuid}", scripted.follow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    scripted.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield scripted
    await runner.cleanup()


def config(tmp_path: Path, api: ScriptedApi, *, token: bool = True) -> str:
    port = api.url.rsplit(":", 1)[1]
    path = tmp_path / "cli.toml"
    path.write_text(
        f'site = "test"\n[api]\nlisten = "127.0.0.1:{port}"\n'
        + ('token_env = "API_TOKEN"\n' if token else "")
    )
    return str(path)


ENV = {"API_TOKEN": TOKEN}
BOOK = ("book", "room-4a", "--title", "T", "--minutes", "5")


async def test_no_token_source_is_78_before_anything_is_sent(
    api: ScriptedApi, tmp_path: Path
) -> None:
    cfg = config(tmp_path, api, token=False)
    code, _, err = await acli(*BOOK, "-c", cfg, env=ENV)
    assert code == 78, err
    assert "api.token_env" in err and "no API token source" in err
    code, _, err = await acli("release", "room-4a", "b1", "-c", cfg, env=ENV)
    assert code == 78 and "api.token_env" in err, err
    # --api points elsewhere: the routes need the token there too.
    code, _, err = await acli(*BOOK, "--api", api.url, "-c", cfg, env=ENV)
    assert code == 78, err
    assert api.seen == []


async def test_the_token_is_sent_when_configured(api: ScriptedApi, tmp_path: Path) -> None:
    code, out, err = await acli(*BOOK, "-c", config(tmp_path, api), env=ENV)
    assert code == 0 and f"requested {UUID}" in out, out + err
    assert api.seen == [("POST", "/v1/rooms/room-4a/bookings", f"Bearer {TOKEN}")]


@pytest.mark.parametrize("command", ["book", "release"])
async def test_device_offline_is_75_not_the_no_agent_69(
    api: ScriptedApi, tmp_path: Path, command: str
) -> None:
    api.answer = (503, {"error": "device room-4a is not connected"})
    args = BOOK if command == "book" else ("release", "room-4a", "b1")
    code, _, err = await acli(*args, "-c", config(tmp_path, api), env=ENV)
    assert code == 75, err
    assert "HTTP 503" in err and "not connected" in err
    assert len(api.seen) == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (409, {"error": "overlaps", "conflict": "b1"}),
        (422, {"error": "too long", "field": "duration_min"}),
        (404, {"error": "unknown room"}),
        (502, {"error": "the device refused"}),
        (401, {"error": "no valid token"}),
    ],
)
async def test_a_refusal_is_1(
    api: ScriptedApi, tmp_path: Path, status: int, body: dict[str, Any]
) -> None:
    api.answer = (status, body)
    code, _, err = await acli(*BOOK, "-c", config(tmp_path, api), env=ENV)
    assert code == 1 and f"HTTP {status}" in err, err


async def test_wait_keeps_waiting_while_overdue_and_ends_created(
    api: ScriptedApi, tmp_path: Path
) -> None:
    """An overdue request (its deadline passed, the device not heard from) can still be
    created: ``--wait`` does not stop there."""
    api.statuses = [
        {"status": "pending"},
        {"status": "overdue"},
        {"status": "overdue"},
        {"status": "created", "booking_id": "b7", "meeting_id": "m7"},
    ]
    code, out, err = await acli(*BOOK, "--wait", "-c", config(tmp_path, api), env=ENV)
    assert code == 0, out + err
    assert "created booking b7 (meeting m7)" in out
    assert [p for m, p, _ in api.seen if m == "GET"] == [f"/v1/requests/{UUID}"] * 4


async def test_wait_gives_up_on_an_undecided_request_with_75(
    api: ScriptedApi, tmp_path: Path
) -> None:
    api.statuses = [{"status": "overdue"}]
    code, _, err = await acli(
        *BOOK, "--wait", "--timeout", "1", "-c", config(tmp_path, api), env=ENV
    )
    assert code == 75, err
    assert "still overdue" in err and f"/v1/requests/{UUID}" in err


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [({"status": "expired"}, "expired"), ({"status": "failed", "cause": "Decline"}, "Decline")],
)
async def test_wait_on_a_final_refusal_is_1(
    api: ScriptedApi, tmp_path: Path, outcome: dict[str, Any], shown: str
) -> None:
    api.statuses = [{"status": "overdue"}, outcome]
    code, out, err = await acli(*BOOK, "--wait", "-c", config(tmp_path, api), env=ENV)
    assert code == 1 and shown in out, out + err
