"""The agent's side of Microsoft Graph change notifications: aiohttp handlers to mount on the
local API (:meth:`GraphNotifications.routes`).

``notification_url`` (``[microsoft]``) must be a public HTTPS URL: Graph delivers nowhere else.
The agent's local API stays on loopback; a reverse proxy terminates TLS and forwards
``<notification_url>/v1/notifications/microsoft`` and ``.../lifecycle`` to the same paths here.

What Graph's docs fix, and these handlers honour:

- Validation: when a subscription is created, Graph POSTs ``?validationToken=<token>`` to each
  URL and wants 200, ``text/plain``, the URL-decoded token as the body, within 10 s. Nothing
  else is done with such a request (no JSON is expected).
- Change notifications: ``{"value": [{subscriptionId, clientState, changeType, resource, ...}]}``
  answered 202 at once (Graph retries and then throttles an endpoint slower than 3 s). Every
  item's ``clientState`` is checked in constant time against the subscription's; an unknown
  subscription or a wrong clientState is ignored and counted (not an error: a stale
  subscription from a previous run, or a forgery). A verified item only calls ``poke(room_id)``:
  its content is never trusted, the delta fetch reads the truth.
- Lifecycle notifications (``lifecycleEvent``: reauthorizationRequired, subscriptionRemoved,
  missed), verified the same way, go to :meth:`PushTarget.lifecycle`.

Nothing here awaits anything but the request body: no store, no Graph call, so the 202 cannot
be delayed by them. Bodies are bounded (``max_body_bytes``) and must be JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.calendars.graph.push import LIFECYCLE_PATH, NOTIFY_PATH, RoomMatch

__all__ = ["GraphNotifications", "PushTarget"]

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 256 * 1024  # Graph batches notifications; without resource data they are small
MAX_TOKEN_CHARS = 1024
MAX_ITEMS = 1000


class PushTarget(Protocol):
    """What the handlers need from the subscription manager (:class:`PushManager`)."""

    def match(self, subscription_id: str, client_state: str | None) -> RoomMatch: ...

    def lifecycle(self, room_id: str, subscription_id: str, event: str) -> None: ...


class GraphNotifications:
    """The two webhook endpoints. ``poke(room_id)`` must not block (``GraphPoller.poke``).
    ``counters``: validations, notifications, pokes, unknown_subscription,
    client_state_mismatch, lifecycle, malformed, too_large, not_json."""

    def __init__(
        self,
        target: PushTarget,
        poke: Callable[[str], object],
        *,
        path: str = NOTIFY_PATH,
        lifecycle_path: str = LIFECYCLE_PATH,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._target = target
        self._poke = poke
        self.path = path
        self.lifecycle_path = lifecycle_path
        self._max_body = max_body_bytes
        self.counters: Counter[str] = Counter()

    def routes(self) -> list[web.RouteDef]:
        """``POST`` on both paths, for ``app.add_routes(...)``."""
        return [
            web.post(self.path, self._changes),
            web.post(self.lifecycle_path, self._lifecycle),
        ]

    # ------------------------------------------------------------------ handlers

    async def _changes(self, request: web.Request) -> web.StreamResponse:
        early = self._validation(request)
        if early is not None:
            return early
        items = await self._items(request)
        if isinstance(items, web.Response):
            return items
        poked: set[str] = set()
        for item in items:
            self.counters["notifications"] += 1
            room_id = self._verify(item)
            if room_id is not None and room_id not in poked:
                poked.add(room_id)  # a batch of 50 changes in one room is one delta fetch
                self.counters["pokes"] += 1
                self._poke(room_id)
        return web.Response(status=202)

    async def _lifecycle(self, request: web.Request) -> web.StreamResponse:
        early = self._validation(request)
        if early is not None:
            return early
        items = await self._items(request)
        if isinstance(items, web.Response):
            return items
        for item in items:
            room_id = self._verify(item)
            event = item.get("lifecycleEvent")
            if room_id is None:
                continue
            if not isinstance(event, str):
                self.counters["malformed"] += 1
                continue
            self.counters["lifecycle"] += 1
            self._target.lifecycle(room_id, str(item["subscriptionId"]), event)
        return web.Response(status=202)

    # ------------------------------------------------------------------ parts

    def _validation(self, request: web.Request) -> web.Response | None:
        token = request.query.get("validationToken")  # aiohttp has URL-decoded it
        if token is None:
            return None
        if not token or len(token) > MAX_TOKEN_CHARS:
            self.counters["malformed"] += 1
            return web.Response(status=400, text="validationToken empty or too long")
        self.counters["validations"] += 1
        log.info("graph notification URL validated", path=request.path)
        return web.Response(status=200, text=token, content_type="text/plain")

    async def _items(self, request: web.Request) -> list[dict[str, Any]] | web.Response:
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            self.counters["too_large"] += 1
            return web.Response(status=413, text=f"body above {self._max_body} bytes")
        if request.content_type != "application/json":
            self.counters["not_json"] += 1
            return web.Response(status=415, text="application/json expected")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > self._max_body:  # a chunked body that never declared its size
                self.counters["too_large"] += 1
                return web.Response(status=413, text=f"body above {self._max_body} bytes")
            chunks.append(chunk)
        try:
            doc = jsoncodec.loads(b"".join(chunks))
        except (jsoncodec.JSONDecodeError, UnicodeDecodeError):
            self.counters["malformed"] += 1
            return web.Response(status=400, text="invalid JSON")
        values = doc.get("value") if isinstance(doc, dict) else None
        if not isinstance(values, list) or len(values) > MAX_ITEMS:
            self.counters["malformed"] += 1
            return web.Response(status=400, text='{"value": [...]} expected')
        return [v for v in values if isinstance(v, dict)]

    def _verify(self, item: dict[str, Any]) -> str | None:
        sub_id = item.get("subscriptionId")
        state = item.get("clientState")
        if not isinstance(sub_id, str) or not (state is None or isinstance(state, str)):
            self.counters["malformed"] += 1
            return None
        verdict = self._target.match(sub_id, state)
        if verdict.room_id is None:
            self.counters[verdict.reason] += 1
            return None
        return verdict.room_id
