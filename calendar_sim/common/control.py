"""The control API's base (aiohttp, plain HTTP on 127.0.0.1): health, clock and faults.

Routes every fake has (JSON in, JSON out):

- ``GET  /healthz`` -> ``{"ok": true}``
- ``GET  /clock`` -> ``{"now": "...Z", "unix": s}``; ``POST /clock`` ``{"advance_s": x}``
- ``GET  /faults`` -> ``[{id, kind, mailbox, route, status, code, retry_after, delay_s, count,
  hits, released}]``
- ``POST /faults`` ``{"kind": ..., "mailbox"?, "route"?, "status"?, "code"?, "retry_after"?,
  "delay_s"?, "count"?}`` (the service may accept shorthands, see its docs) -> the fault
- ``POST /faults/{id}/release`` -> the fault; ``DELETE /faults?mailbox=M`` -> ``{"cleared": n}``

Each service adds its own routes to ``app``. Errors: 400 ``{"error": ...}``, 404 unknown id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .clock import SimClock
from .faults import Fault, FaultTable
from .server import HttpsSite


def error(status: int, message: str) -> web.HTTPException:
    """An aiohttp exception answering ``{"error": message}`` with ``status``."""
    cls = {404: web.HTTPNotFound, 409: web.HTTPConflict}.get(status, web.HTTPBadRequest)
    return cls(text=json.dumps({"error": message}), content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} without a body); 400 naming the problem otherwise."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise error(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise error(400, "body must be a JSON object")
    return data


class ControlServer:
    """The control API of one fake: ``routes`` adds the service's own; ``start()`` listens."""

    def __init__(
        self,
        clock: SimClock,
        faults: FaultTable,
        fault_from_json: Callable[[dict[str, Any]], Fault],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.clock = clock
        self.faults = faults
        self._fault_from_json = fault_from_json
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/clock", self._get_clock),
                web.post("/clock", self._post_clock),
                web.get("/faults", self._get_faults),
                web.post("/faults", self._post_fault),
                web.post("/faults/{id}/release", self._release_fault),
                web.delete("/faults", self._clear_faults),
            ]
        )
        self.site = HttpsSite(self.app, host, port, tls=False)

    @property
    def url(self) -> str:
        return self.site.url

    async def start(self) -> None:
        await self.site.start()

    async def stop(self) -> None:
        await self.site.stop()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def _clock(self) -> dict[str, Any]:
        now = self.clock.now()
        return {"now": now.isoformat().replace("+00:00", "Z"), "unix": now.timestamp()}

    async def _get_clock(self, request: web.Request) -> web.Response:
        return web.json_response(self._clock())

    async def _post_clock(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            self.clock.advance(float(body.get("advance_s", 0)))
        except (TypeError, ValueError) as exc:
            raise error(400, f"advance_s: {exc}") from None
        return web.json_response(self._clock())

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.describe())

    async def _post_fault(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            fault = self.faults.add(self._fault_from_json(body))
        except (KeyError, TypeError, ValueError) as exc:
            raise error(400, f"bad fault: {exc}") from None
        return web.json_response(fault.describe())

    async def _release_fault(self, request: web.Request) -> web.Response:
        for fault in self.faults.faults:
            if str(fault.id) == request.match_info["id"]:
                fault.release()
                return web.json_response(fault.describe())
        raise error(404, f"no fault {request.match_info['id']}")

    async def _clear_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.faults.clear(request.query.get("mailbox"))})
