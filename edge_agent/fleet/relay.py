"""Push notifications for a room another member holds: relayed through PostgreSQL.

A fleet has one public ``notification_url``, and the reverse proxy behind it forwards each
notification to whichever member it picks; but only the member that holds a room's lease has
the room's Graph subscription (its ``clientState``) or Google watch channel (its token), and
polls it. So a member that receives a notification it cannot match to a subscription or channel
of its own answers it as it would alone (Graph 202, Google 200: the source must neither retry
nor learn which ids exist) and relays it, as it came, on the fleet's database
(``pg_notify('edge_push_relay', ...)``). Every member listens; the one that holds the
subscription checks the ``clientState`` / token in constant time as for a notification it
received itself, and pokes the room (a delta fetch). The relay carries no secret that the
sender did not receive, and nobody but the holder acts on it: a forged notification is still
ignored, only now by the right member. A notification whose room has no holder at that moment
(a handover in progress) is dropped: the next owner's first round is a delta fetch anyway.

Lifecycle notifications (Graph ``reauthorizationRequired``, ``subscriptionRemoved``,
``missed``) are not relayed: the holder's renewal finds a removed subscription (404) and
recreates it, and its polling covers ``missed``.

Bounded: at most :data:`QUEUE_MAX` relays wait to be sent (the oldest are dropped and
counted); payloads are at most :data:`MAX_PAYLOAD` bytes (PostgreSQL's limit is 8000).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import structlog
from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.store.postgres import PostgresStore

log = structlog.get_logger(__name__)

CHANNEL = "edge_push_relay"
QUEUE_MAX = 1000
MAX_PAYLOAD = 4000
RECONNECT = Backoff(initial=0.5, maximum=15.0)

Handler = Callable[[Mapping[str, str]], bool]
"""Tries a relayed notification (``{field: value}``) on this member; True when it poked."""


class PushRelay:
    """One per member. :meth:`run` in the agent's TaskGroup (task ``fleet-push-relay``)."""

    def __init__(self, store: PostgresStore, member_id: str) -> None:
        self._store = store
        self.member_id = member_id
        self._handlers: dict[str, Handler] = {}
        self._outgoing: deque[str] = deque()
        self._wake = asyncio.Event()
        self.listening = asyncio.Event()
        """Set while the listening connection is up (tests wait for it)."""
        self.counters: Counter[str] = Counter()
        """sent, dropped, received, poked, ignored, malformed."""

    def on(self, source: str, handler: Handler) -> None:
        """Relayed notifications of ``source`` (``microsoft``, ``google``) go to ``handler``."""
        self._handlers[source] = handler

    def publish(self, source: str, item: Mapping[str, str]) -> None:
        """Relay a notification this member could not match (never blocks)."""
        payload = jsoncodec.dumps({"from": self.member_id, "source": source, "item": dict(item)})
        if len(payload.encode()) > MAX_PAYLOAD:
            self.counters["dropped"] += 1
            return
        if payload in self._outgoing:
            return  # the same notification twice in a burst: one relay does it
        if len(self._outgoing) >= QUEUE_MAX:
            self._outgoing.popleft()
            self.counters["dropped"] += 1
        self._outgoing.append(payload)
        self._wake.set()

    def deliver(self, payload: str) -> None:
        """A relayed notification arrived (from the listening connection)."""
        try:
            doc = jsoncodec.loads(payload)
            sender, source, item = doc["from"], doc["source"], doc["item"]
            if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
                raise TypeError("item is not a string map")
        except (ValueError, TypeError, KeyError) as exc:
            self.counters["malformed"] += 1
            log.warning("malformed push relay ignored", error=repr(exc))
            return
        if sender == self.member_id:
            return  # our own relay: we could not match it the first time
        handler = self._handlers.get(source)
        self.counters["received"] += 1
        if handler is not None and handler(item):
            self.counters["poked"] += 1
        else:
            self.counters["ignored"] += 1

    async def run(self) -> None:
        """Listen and send until cancelled (cancel-safe); reconnects with backoff."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(), name="fleet-push-relay.listen")
            tg.create_task(self._send(), name="fleet-push-relay.send")

    async def _listen(self) -> None:
        attempt = 0
        kwargs: dict[str, Any] = {
            **self._store.connect_kwargs,
            "autocommit": True,
            "application_name": f"edge-agent {self.member_id} push-relay",
        }
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._store.url, **kwargs)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    attempt = 0
                    async for note in conn.notifies():
                        self.deliver(note.payload)
                finally:
                    self.listening.clear()
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database comes back; so do we
                attempt += 1
                delay = RECONNECT.delay(attempt)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "push relay: cannot listen on the fleet database; notifications for "
                        "rooms other members hold wait for their polling",
                        error=repr(exc),
                        retry_in_s=round(delay, 1),
                    )
                await asyncio.sleep(delay)

    async def _send(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                payload = self._outgoing[0]
                try:
                    async with asyncio.timeout(5.0), self._store.pool.connection() as conn:
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - kept and retried (bounded queue)
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning("push relay: cannot send", error=repr(exc))
                    await asyncio.sleep(RECONNECT.delay(attempt))
                    continue
                attempt = 0
                if self._outgoing and self._outgoing[0] == payload:
                    self._outgoing.popleft()
                self.counters["sent"] += 1


# -- Graph: the subscription manager's matcher, relaying what it cannot match ------------------


class RelayedGraphTarget:
    """What :class:`edge_agent.calendars.notify.GraphNotifications` matches against in a
    fleet: this member's :class:`~edge_agent.calendars.graph.push.PushManager`; an unknown
    subscription is relayed to the others (and still answered 202 and counted here)."""

    def __init__(self, manager: Any, relay: PushRelay, poke: Callable[[str], object]) -> None:
        self._manager = manager
        self._relay = relay
        self._poke = poke
        relay.on("microsoft", self._relayed)

    def match(self, subscription_id: str, client_state: str | None) -> Any:
        verdict = self._manager.match(subscription_id, client_state)
        if verdict.room_id is None and verdict.reason == "unknown_subscription":
            self._relay.publish(
                "microsoft",
                {"subscriptionId": subscription_id, "clientState": client_state or ""},
            )
        return verdict

    def lifecycle(self, room_id: str, subscription_id: str, event: str) -> None:
        self._manager.lifecycle(room_id, subscription_id, event)

    def _relayed(self, item: Mapping[str, str]) -> bool:
        verdict = self._manager.match(item.get("subscriptionId", ""), item.get("clientState"))
        if verdict.room_id is None:
            return False
        self._poke(verdict.room_id)
        return True


# -- Google: the watch channels' route, relaying what no channel here matches --------------------

_GOOGLE_HEADERS = ("X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Resource-State")


def relayed_google_routes(watch: Any, relay: PushRelay, path: str) -> list[web.RouteDef]:
    """The Google notification route in a fleet: as :meth:`WatchManager.routes`, plus a relay
    of every change message no channel of this member matched."""

    def relayed(item: Mapping[str, str]) -> bool:
        return bool(watch.notification(dict(item)))

    relay.on("google", relayed)

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()  # no body is expected; drain whatever came
        headers = {k: request.headers.get(k, "") for k in _GOOGLE_HEADERS}
        if not watch.notification(headers) and headers["X-Goog-Resource-State"] != "sync":
            relay.publish("google", headers)
        # 200 even when ignored: Google retries errors, and an unknown channel must not
        # learn which ids exist.
        return web.Response(status=200)

    return [web.post(path, handler)]


__all__ = ["CHANNEL", "PushRelay", "RelayedGraphTarget", "relayed_google_routes"]
