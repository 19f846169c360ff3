"""``graph-sim`` out of process: HTTPS with the certificate it wrote, and its control API."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
from graphsim_helpers import SCOPE


async def test_graph_sim_serves_and_is_driven_by_its_control_api(tmp_path: Path) -> None:
    ca = tmp_path / "graph-sim-ca.pem"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calendar_sim.graph",
        "--port",
        "0",
        "--control-port",
        "0",
        "--rooms",
        "2",
        "--generate-days",
        "1",
        "--start",
        "2026-11-23T07:00:00Z",
        "--write-ca",
        str(ca),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        info = json.loads(line)
        tls = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as http:
            token_url = f"{info['authority_url']}/{info['tenant_id']}/oauth2/v2.0/token"
            form = {
                "grant_type": "client_credentials",
                "client_id": info["client_id"],
                "client_secret": "graph-sim-secret",
                "scope": SCOPE,
            }
            async with http.post(token_url, data=form, ssl=tls) as resp:
                assert resp.status == 200
                token = (await resp.json())["access_token"]
            control = info["control_url"]
            async with http.post(
                f"{control}/mailboxes/room-1@contoso.com/events",
                json={"start": "2026-11-23T12:00:00Z", "subject": "Via control"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(
                f"{control}/faults",
                json={
                    "kind": "throttle",
                    "mailbox": "room-1@contoso.com",
                    "retry_after": 4,
                    "count": 1,
                },
            ) as resp:
                assert resp.status == 200
            async with http.post(f"{control}/faults", json={"kind": "nonsense"}) as resp:
                assert resp.status == 400 and "unknown fault" in (await resp.json())["error"]
            view = (
                f"{info['graph_url']}/users/room-1@contoso.com/calendarView"
                "?startDateTime=2026-11-23T00:00:00Z&endDateTime=2026-11-24T00:00:00Z&$top=100"
            )
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(view, headers=headers, ssl=tls) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"] == "4"
            async with http.get(view, headers=headers, ssl=tls) as resp:
                assert resp.status == 200
                subjects = [e["subject"] for e in (await resp.json())["value"]]
            assert "Via control" in subjects
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_bad_arguments_exit_2() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calendar_sim.graph",
        "--start",
        "not-a-date",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"not-a-date" in err


async def test_google_sim_serves_with_the_key_it_wrote(tmp_path: Path) -> None:
    import time

    import jwt

    ca, key_file = tmp_path / "ca.pem", tmp_path / "key.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calendar_sim.google", "--port", "0", "--control-port", "0",
        "--start", "2026-11-23T07:00:00Z", "--write-ca", str(ca), "--write-key", str(key_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        key = json.loads(key_file.read_text())
        now = int(time.time())
        signed = jwt.encode(
            {"iss": key["client_email"], "sub": info["admin"], "aud": key["token_uri"],
             "scope": "https://www.googleapis.com/auth/calendar.readonly",
             "iat": now, "exp": now + 3600},
            key["private_key"], algorithm="RS256", headers={"kid": key["private_key_id"]},
        )  # fmt: skip
        tls = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as http:
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": signed,
            }
            async with http.post(key["token_uri"], data=form, ssl=tls) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["access_token"]
            control = info["control_url"]
            async with http.post(
                f"{control}/calendars/room-1@example.com/events",
                json={"start": "2026-11-23T12:00:00Z", "summary": "Via control"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            url = f"{info['calendar_url']}/calendars/room-1@example.com/events"
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=tls) as resp:
                assert resp.status == 200
                assert [e["summary"] for e in (await resp.json())["items"]] == ["Via control"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
