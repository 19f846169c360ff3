"""Helpers of the Graph fake's tests: a bare HTTPS client, the pinned start."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from calendar_sim.graph import GraphSim, GraphSimConfig

# A Monday, 07:00 UTC (08:00 in Oslo): every verdict is relative to this, never to the wall clock.
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
SCOPE = "https://graph.microsoft.com/.default"


class GraphClient:
    """A bare HTTPS client of the fake that trusts its certificate (no agent code involved)."""

    def __init__(self, sim: GraphSim, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.ssl = ssl.create_default_context(cadata=sim.cert_pem.decode())
        self.token = ""

    async def fetch_token(self, **form: str) -> tuple[int, dict[str, Any]]:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.sim.config.client_id,
            "client_secret": self.sim.config.client_secret or "",
            "scope": SCOPE,
            **form,
        }
        url = f"{self.sim.authority_url}/{self.sim.config.tenant_id}/oauth2/v2.0/token"
        async with self.session.post(url, data=data, ssl=self.ssl) as resp:
            body = await resp.json()
            if resp.status == 200:
                self.token = body["access_token"]
            return resp.status, body

    async def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, str], Any]:
        if not url.startswith("https://"):
            url = self.sim.graph_url + url
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.session.request(method, url, headers=hdrs, ssl=self.ssl, **kw) as resp:
            text = await resp.text()
            body = await resp.json(content_type=None) if text else None
            return resp.status, dict(resp.headers), body

    async def get(self, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return await self.request("GET", url, **kw)


def make_config(**kw: Any) -> GraphSimConfig:
    base: dict[str, Any] = {"start": START, "frozen": True, "rooms": 3, "time_zone": "Europe/Oslo"}
    base.update(kw)
    return GraphSimConfig(**base)


class NotificationReceiver:
    """A tiny real HTTPS endpoint for Graph's validation and notifications (trustme cert)."""

    def __init__(self) -> None:
        import trustme

        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1")
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.ssl)
        self.validations: list[str] = []
        self.notifications: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.validation_answer: str | None = None  # None: echo the token, as required
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app)
        self.port = 0

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/{path}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(token)
            answer = token if self.validation_answer is None else self.validation_answer
            return web.Response(text=answer, content_type="text/plain")
        raw = await request.read()
        body = await request.json() if raw else {"headers": dict(request.headers)}
        await self.notifications.put((request.match_info["path"], body))
        return web.Response(status=202 if raw else 200)
