"""A real webhook receiver for tests and benchmarks (aiohttp, loopback only).

In process::

    rx = WebhookReceiver(secret="whsec_...")          # ssl_context=... for https
    await rx.start()                                    # a free port on 127.0.0.1
    rx.url                                              # "http://127.0.0.1:PORT/hook"
    rx.script(Reply(503, retry_after="1"), Reply(200))  # next answers, in order; then default
    rx.responder = lambda req: Reply(410) if ... else None   # or decide per request
    await rx.wait_events(10, timeout=5)                 # until 10 distinct event_ids accepted
    rx.events                                           # accepted envelopes, in arrival order
    rx.duplicates                                       # deliveries of an already-accepted id
    await rx.go_down(); await rx.come_back()            # close the listener and connections
    await rx.stop()

Every request is checked with ``standardwebhooks.Webhook(secret).verify(body, headers)``; a
request that fails is answered 401 and counted in ``rx.bad_signatures``. Batch bodies
(``{"type": "batch", "data": {"events": [...]}}``) are expanded into their events.

Out of process (benchmarks): ``python tests/receivers.py --port 0 [--secret S]`` prints
``PORT <n>`` and serves until killed; ``GET /stats`` answers counts and latency percentiles
(``now - data.observed_at`` per accepted event); ``POST /reset`` clears the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

try:
    from standardwebhooks import Webhook
except ImportError:  # pragma: no cover - the bench may run without the test extras
    Webhook = None  # type: ignore[misc, assignment]


@dataclass(slots=True)
class Reply:
    """One scripted answer: status, optional Retry-After (or Location), optional delay before
    answering."""

    status: int = 204
    retry_after: str | None = None
    delay_s: float = 0.0
    location: str | None = None


@dataclass(slots=True)
class Delivery:
    """One request as received."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool
    at: float
    event_ids: list[str] = field(default_factory=list)


def _parse_observed(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


class WebhookReceiver:
    def __init__(
        self,
        secret: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/hook",
        record_bodies: bool = True,
    ) -> None:
        self.secret = secret
        self._verifier = Webhook(secret) if (secret and Webhook is not None) else None
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.path = path
        self.record_bodies = record_bodies
        self.default = Reply(204)
        self.responder: Callable[[Delivery], Reply | None] | None = None
        self._script: collections.deque[Reply] = collections.deque()
        self.deliveries: list[Delivery] = []
        self.events: list[dict[str, Any]] = []
        self.accepted_ids: set[str] = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.requests = 0
        self.latencies: list[float] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(self.path, self._handle)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._runner = runner

    async def go_down(self) -> None:
        """Close the listener and every open connection (a receiver that went away)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def come_back(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def stop(self) -> None:
        await self.go_down()

    async def __aenter__(self) -> WebhookReceiver:  # noqa: PYI034
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting and waiting ----------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then with ``default``."""
        self._script.extend(replies)

    async def wait_events(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` distinct event_ids have been accepted (2xx)."""
        async with asyncio.timeout(timeout):
            while len(self.accepted_ids) < n:
                self._changed.clear()
                await self._changed.wait()

    async def wait_requests(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.requests < n:
                self._changed.clear()
                await self._changed.wait()

    def by_device(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for env in self.events:
            out[env["data"]["device_id"]].append(env)
        return dict(out)

    # -- handlers -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = True
        if self._verifier is not None:
            try:
                self._verifier.verify(body, headers, json_parse=False)
            except Exception:  # noqa: BLE001 - any failure is a bad signature
                verified = False
        d = Delivery(
            webhook_id=headers.get("webhook-id", ""),
            headers=headers,
            body=body if self.record_bodies else b"",
            status=0,
            verified=verified,
            at=time.time(),
        )
        self.requests += 1
        if not verified:
            self.bad_signatures += 1
            d.status = 401
            self._record(d, [])
            return web.Response(status=401)
        reply = None
        if self.responder is not None:
            reply = self.responder(d)
        if reply is None:
            reply = self._script.popleft() if self._script else self.default
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        d.status = reply.status
        envs: list[dict[str, Any]] = []
        if 200 <= reply.status < 300:
            doc = json.loads(body)
            envs = doc["data"]["events"] if doc.get("type") == "batch" else [doc]
        self._record(d, envs)
        hdrs = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        if reply.location is not None:
            hdrs["Location"] = reply.location
        return web.Response(status=reply.status, headers=hdrs or None)

    def _record(self, d: Delivery, envs: list[dict[str, Any]]) -> None:
        now = time.time()
        for env in envs:
            eid = env["data"]["event_id"]
            d.event_ids.append(eid)
            if eid in self.accepted_ids:
                self.duplicates += 1
                continue
            self.accepted_ids.add(eid)
            if self.record_bodies:
                self.events.append(env)
            obs = _parse_observed(env["data"].get("observed_at"))
            if obs is not None:
                self.latencies.append(now - obs)
        if self.record_bodies:
            self.deliveries.append(d)
        self._changed.set()

    async def _stats(self, request: web.Request) -> web.Response:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return web.json_response(
            {
                "requests": self.requests,
                "accepted": len(self.accepted_ids),
                "duplicates": self.duplicates,
                "bad_signatures": self.bad_signatures,
                "p50": pct(0.50),
                "p99": pct(0.99),
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.latencies.clear()
        return web.json_response({"ok": True})


async def _serve(port: int, secret: str | None) -> None:
    rx = WebhookReceiver(secret, port=port, record_bodies=False)
    await rx.start()
    print(f"PORT {rx.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description="loopback webhook receiver")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--secret", default=None)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args.port, args.secret))


if __name__ == "__main__":
    main()
