"""Graph change-notification subscriptions for N rooms: the optional push beside delta polling.

What Microsoft's docs fix, and this module honours:

- ``POST /subscriptions`` with ``resource = /users/{mailbox}/events``, ``changeType =
  created,updated,deleted``, ``notificationUrl``, ``lifecycleNotificationUrl``, a
  ``clientState`` (at most 128 characters; a random secret per subscription here, never logged)
  and ``expirationDateTime``. Graph validates both URLs before it answers (a POST with
  ``?validationToken=`` that must be echoed within 10 s, :mod:`edge_agent.calendars.notify`);
  an unreachable URL is a 400 and no subscription.
- An Outlook event subscription lives at most 10,080 minutes (under 7 days); it is renewed with
  ``PATCH /subscriptions/{id}`` ``{"expirationDateTime"}`` before it expires. A renewal that
  gets 404 (the subscription is gone) creates a new one.
- Lifecycle notifications: ``reauthorizationRequired`` -> renew now (a PATCH also
  reauthorizes); ``subscriptionRemoved`` -> create a new subscription, then a delta fetch
  (changes may have been lost meanwhile); ``missed`` -> a delta fetch of the room (the docs:
  resynchronise with delta query).
- A notification only triggers a delta fetch (``poke(room_id)``); its content is never trusted.
  Delta polling continues as the safety net: :meth:`PushManager.poll_interval_s` stretches a
  room's interval by :data:`HEALTHY_POLL_FACTOR` while its subscription is healthy.

Decisions are a pure function, :func:`plan_subscriptions` ``(rooms, subscriptions, retry_at,
now) -> [Create | Renew | Recreate | Delete]``; :class:`PushManager` is the thin shell that
executes them (at most ``max_in_flight`` calls at once) and sleeps until :func:`next_check`.

Subscriptions are not stored: after a restart the previous run's subscriptions (same
``notificationUrl``) are deleted first, since their ``clientState`` is lost with the process.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.calendars.graph.auth import AuthError, TokenSource
from edge_agent.calendars.graph.client import graph_link
from edge_agent.calendars.graph.gate import MailboxGates
from edge_agent.calendars.http import TOO_LARGE, bounded_request
from edge_agent.clock import Clock, parse_utc, system_clock
from edge_agent.forward.webhook import parse_retry_after

__all__ = [
    "CHANGE_TYPES",
    "HEALTHY_POLL_FACTOR",
    "LIFECYCLE_PATH",
    "MAX_EVENT_LIFETIME",
    "NOTIFY_PATH",
    "Create",
    "Delete",
    "PushError",
    "PushManager",
    "Recreate",
    "Renew",
    "RoomMatch",
    "Subscription",
    "next_check",
    "plan_subscriptions",
]

log = structlog.get_logger(__name__)

NOTIFY_PATH = "/v1/notifications/microsoft"  # served by notify.py on the local API
LIFECYCLE_PATH = "/v1/notifications/microsoft/lifecycle"
CHANGE_TYPES = "created,updated,deleted"
MAX_EVENT_LIFETIME = timedelta(minutes=10080)  # Outlook event subscriptions (Graph docs)
DEFAULT_LIFETIME = timedelta(days=3)
DEFAULT_RENEW_MARGIN = timedelta(days=1)  # renewals survive a day of Graph (or proxy) trouble
CLOCK_SKEW = timedelta(minutes=5)  # our clock vs Graph's: never ask beyond the maximum
HEALTHY_POLL_FACTOR = 10.0  # 60 s polling becomes 10 min while push works
FAILURE_BACKOFF = Backoff(initial=30.0, maximum=3600.0)
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Subscription:
    """One live subscription as this process made it. ``client_state`` is the secret Graph
    echoes in every notification (kept out of ``repr``, hence out of every log line)."""

    room_id: str
    mailbox: str
    subscription_id: str
    client_state: str = field(repr=False)
    expires_at: datetime
    reauthorize: bool = False  # a reauthorizationRequired arrived: renew now
    removed: bool = False  # subscriptionRemoved (or a 404 on renewal): make a new one


@dataclass(frozen=True, slots=True)
class Create:
    room_id: str
    mailbox: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Renew:
    room_id: str
    subscription_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Recreate:
    """The subscription is gone at Graph (removed or expired): a new one, then a delta fetch."""

    room_id: str
    mailbox: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Delete:
    room_id: str
    subscription_id: str


PlannedAction = Create | Renew | Recreate | Delete


def plan_subscriptions(
    rooms: Mapping[str, str],
    subscriptions: Mapping[str, Subscription],
    retry_at: Mapping[str, datetime],
    now: datetime,
    *,
    lifetime: timedelta = DEFAULT_LIFETIME,
    renew_margin: timedelta = DEFAULT_RENEW_MARGIN,
) -> list[PlannedAction]:
    """What to do now, per room (sorted by room id). ``rooms``: room id -> mailbox wanted;
    ``subscriptions``: room id -> the live one; ``retry_at``: a failed room waits until then.

    - a subscription whose room is no longer wanted: Delete (even while backing off);
    - a room backing off: nothing yet;
    - a wanted room without a subscription: Create;
    - removed, expired, or on another mailbox: Recreate;
    - reauthorization asked, or less than ``renew_margin`` left: Renew to ``now + lifetime``.
    """
    expires_at = now + lifetime
    actions: list[PlannedAction] = []
    for room_id in sorted(set(rooms) | set(subscriptions)):
        sub = subscriptions.get(room_id)
        mailbox = rooms.get(room_id)
        if mailbox is None:
            if sub is not None and not sub.removed:
                actions.append(Delete(room_id, sub.subscription_id))
            continue
        wait = retry_at.get(room_id)
        if wait is not None and wait > now:
            continue
        if sub is None:
            actions.append(Create(room_id, mailbox, expires_at))
        elif sub.removed or sub.expires_at <= now or sub.mailbox.lower() != mailbox.lower():
            actions.append(Recreate(room_id, mailbox, expires_at))
        elif sub.reauthorize or sub.expires_at - now <= renew_margin:
            actions.append(Renew(room_id, sub.subscription_id, expires_at))
    return actions


def next_check(
    subscriptions: Mapping[str, Subscription],
    retry_at: Mapping[str, datetime],
    *,
    renew_margin: timedelta = DEFAULT_RENEW_MARGIN,
) -> datetime | None:
    """When :func:`plan_subscriptions` next has something to do without new input: the first
    renewal time or the end of the first backoff; None when nothing is pending."""
    times = [s.expires_at - renew_margin for s in subscriptions.values() if not s.removed]
    times.extend(retry_at.values())
    return min(times) if times else None


@dataclass(frozen=True, slots=True)
class RoomMatch:
    """The verdict on a notification's ``subscriptionId`` + ``clientState``."""

    room_id: str | None
    reason: Literal["ok", "unknown_subscription", "client_state_mismatch"]


class PushError(Exception):
    """A subscription call failed; the message names the room and what to do."""

    def __init__(
        self,
        room_id: str,
        message: str,
        *,
        status: int = 0,
        gone: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{room_id}: {message}")
        self.room_id = room_id
        self.status = status
        self.gone = gone  # 404: the subscription no longer exists at Graph
        self.retry_after = retry_after  # a 429's Retry-After, in seconds


@dataclass(slots=True)
class _RoomState:
    failures: int = 0
    retry_at: datetime | None = None
    last_error: str | None = None


class PushManager:
    """Keeps one subscription per room. ``set_rooms`` says which; ``run()`` does the work until
    cancelled; ``stop()`` deletes every subscription (bounded by ``stop_timeout_s``).

    ``notification_url`` is the public HTTPS base a reverse proxy forwards to the agent's local
    API: Graph is given ``notification_url + NOTIFY_PATH`` and ``+ LIFECYCLE_PATH``. ``poke`` is
    the poller's hook (:meth:`GraphPoller.poke`): it must not block (it is called from the
    notification handler before the 202 goes out)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        notification_url: str,
        poke: Callable[[str], object],
        graph_url: str = "https://graph.microsoft.com/v1.0",
        lifetime: timedelta = DEFAULT_LIFETIME,
        renew_margin: timedelta = DEFAULT_RENEW_MARGIN,
        max_in_flight: int = 4,
        request_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        failure_backoff: Backoff = FAILURE_BACKOFF,
        require_https: bool = True,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
        gates: MailboxGates | None = None,
    ) -> None:
        base = notification_url.rstrip("/")
        parts = urlsplit(base)
        if parts.query or parts.fragment or not parts.netloc:
            raise ValueError(
                f"notification_url {notification_url!r} must be a plain base URL (no query or "
                "fragment); the agent appends " + NOTIFY_PATH
            )
        if require_https and parts.scheme != "https":
            raise ValueError(
                f"notification_url {notification_url!r} must be https://: Graph only delivers "
                "to public HTTPS endpoints (a reverse proxy in front of the local API)"
            )
        if not timedelta(0) < renew_margin < lifetime <= MAX_EVENT_LIFETIME - CLOCK_SKEW:
            raise ValueError(
                "need 0 < renew_margin < lifetime <= 10080 min - 5 min (the Outlook event maximum)"
            )
        self._http = http
        self._tokens = tokens
        self._graph = graph_url.rstrip("/")
        self.notification_url = base + NOTIFY_PATH
        self.lifecycle_url = base + LIFECYCLE_PATH
        self._poke = poke
        self._lifetime = lifetime
        self._margin = renew_margin
        self._max_in_flight = max_in_flight
        self._timeout = request_timeout_s
        self._stop_timeout = stop_timeout_s
        self._backoff = failure_backoff
        self._clock = clock
        self._rng = rng or random.Random()
        # The poller's per-mailbox gates (GraphClient.gates): creating a subscription on
        # /users/{mailbox}/events is one of the mailbox's 4 concurrent requests, and waits out
        # a poll's 429 on that mailbox.
        self._gates = gates if gates is not None else MailboxGates()
        self._rooms: dict[str, str] = {}
        self._subs: dict[str, Subscription] = {}  # room id -> live subscription
        self._by_id: dict[str, str] = {}  # subscription id -> room id
        self._pending: dict[str, str] = {}  # clientState of a POST in flight -> room id
        self._state: dict[str, _RoomState] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Condition()  # notified each time a pass finds nothing to do
        self._asked = 0  # settle() calls so far
        self._settled = 0  # the last of them whose wake-up an idle pass has planned after
        self._swept = False
        self.counters: dict[str, int] = {
            "created": 0,
            "renewed": 0,
            "recreated": 0,
            "deleted": 0,
            "failed": 0,
            "lifecycle": 0,
        }

    # ------------------------------------------------------------------ what others call

    def set_rooms(self, rooms: Mapping[str, str]) -> None:
        """The rooms to keep subscribed: room id -> mailbox (the poller's current set)."""
        self._rooms = dict(rooms)
        for gone in [r for r in self._state if r not in self._rooms]:
            del self._state[gone]
        self._wake.set()

    def wake(self) -> None:
        """Plan again now (after the clock moved; lifecycle events and set_rooms do it)."""
        self._wake.set()

    async def settle(self) -> None:
        """Wake the loop and return once it has done everything due and gone idle (startup
        checks, tests). Needs ``run()`` running."""
        self._asked += 1
        target = self._asked
        self._wake.set()
        async with self._idle:
            await self._idle.wait_for(lambda: self._settled >= target)

    def healthy(self, room_id: str) -> bool:
        """True while ``room_id`` has a live subscription: notifications can reach the agent."""
        sub = self._subs.get(room_id)
        return (
            sub is not None
            and not sub.removed
            and not sub.reauthorize
            and sub.expires_at > self._clock.now()
        )

    def poll_interval_s(self, room_id: str, base_s: float) -> float:
        """The poller's interval for ``room_id``: stretched while push is healthy (polling stays
        the safety net), ``base_s`` otherwise."""
        return base_s * HEALTHY_POLL_FACTOR if self.healthy(room_id) else base_s

    def match(self, subscription_id: str, client_state: str | None) -> RoomMatch:
        """Which room a notification is for, if its ``clientState`` is the subscription's
        (compared in constant time). A subscription whose POST is still in flight is matched on
        its clientState alone (Graph may notify before its 201 reaches us)."""
        given = (client_state or "").encode()
        room_id = self._by_id.get(subscription_id)
        if room_id is not None:
            sub = self._subs.get(room_id)
            if sub is not None and hmac.compare_digest(sub.client_state.encode(), given):
                return RoomMatch(room_id, "ok")
            return RoomMatch(None, "client_state_mismatch")
        found: str | None = None
        for secret, rid in self._pending.items():
            if hmac.compare_digest(secret.encode(), given):
                found = rid
        if found is not None:
            return RoomMatch(found, "ok")
        return RoomMatch(None, "unknown_subscription")

    def lifecycle(self, room_id: str, subscription_id: str, event: str) -> None:
        """A verified lifecycle notification (see the module docstring). Never blocks."""
        self.counters["lifecycle"] += 1
        sub = self._subs.get(room_id)
        log.info("graph subscription lifecycle", room=room_id, lifecycle_event=event)
        if event == "missed":
            self._poke(room_id)
            return
        if sub is None or sub.subscription_id != subscription_id:
            return  # about a subscription already replaced
        if event == "reauthorizationRequired":
            self._subs[room_id] = replace(sub, reauthorize=True)
        elif event == "subscriptionRemoved":
            self._forget(room_id)
            self._subs[room_id] = replace(sub, removed=True)
        else:
            log.warning("unknown lifecycle event ignored", room=room_id, lifecycle_event=event)
            return
        self._wake.set()

    def status(self, room_id: str) -> dict[str, Any]:
        """For ``/v1/rooms``: is push healthy, when the subscription expires, the last error."""
        sub = self._subs.get(room_id)
        st = self._state.get(room_id)
        return {
            "push": self.healthy(room_id),
            "subscription_expires": sub.expires_at.isoformat() if sub else None,
            "push_error": st.last_error if st else None,
        }

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Until cancelled: plan, execute, sleep until the next renewal or a wake-up."""
        if not self._swept:
            await self._sweep_previous()
            self._swept = True
        while True:
            self._wake.clear()
            asked = self._asked
            now = self._clock.now()
            retry = {r: s.retry_at for r, s in self._state.items() if s.retry_at is not None}
            actions = plan_subscriptions(
                self._rooms,
                self._subs,
                retry,
                now,
                lifetime=self._lifetime,
                renew_margin=self._margin,
            )
            if actions:
                await self._execute(actions)
                continue  # plan again: a failure may have left work (a 404 on renewal)
            async with self._idle:
                self._settled = asked
                self._idle.notify_all()
            if self._wake.is_set():
                continue  # woken while executing: plan again before sleeping
            due = next_check(self._subs, retry, renew_margin=self._margin)
            timeout = None if due is None else max(0.0, (due - now).total_seconds()) + 0.001
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Delete every subscription, at most ``stop_timeout_s`` in all (call after cancelling
        ``run``, before closing the HTTP client). What is left expires by itself."""
        subs = [s for s in self._subs.values() if not s.removed]
        try:
            async with asyncio.timeout(self._stop_timeout):
                await self._execute([Delete(s.room_id, s.subscription_id) for s in subs])
        except TimeoutError:
            log.warning(
                "graph subscriptions not all deleted at shutdown; they expire by themselves",
                left=len(self._subs),
            )

    async def _execute(self, actions: list[PlannedAction]) -> None:
        todo: Iterator[PlannedAction] = iter(actions)

        async def worker() -> None:
            for action in todo:  # one shared iterator: at most max_in_flight calls at once
                await self._do(action)

        async with asyncio.TaskGroup() as tg:
            for k in range(min(self._max_in_flight, len(actions))):
                tg.create_task(worker(), name=f"graph-push.worker[{k}]")

    async def _do(self, action: PlannedAction) -> None:
        rid = action.room_id
        try:
            if isinstance(action, Create | Recreate):
                await self._create(action.room_id, action.mailbox, action.expires_at)
                if isinstance(action, Recreate):
                    self.counters["recreated"] += 1
                    self._poke(rid)  # changes made while it was gone are fetched now
            elif isinstance(action, Renew):
                await self._renew(action)
            else:
                await self._delete(action)
        except Exception as e:  # noqa: BLE001 - one room's failure must not stop the rest
            self.counters["failed"] += 1
            if not isinstance(e, PushError | AuthError):
                log.exception("graph push action crashed", room=rid)
            if isinstance(e, PushError) and e.gone and rid in self._subs:
                sub = self._subs[rid]
                self._forget(rid)
                self._subs[rid] = replace(sub, removed=True)
                log.warning("graph subscription gone; making a new one", room=rid)
                return
            if isinstance(action, Delete):
                self._forget(rid)  # it expires by itself; do not retry a room we dropped
                self._subs.pop(rid, None)
                log.warning("graph subscription not deleted", room=rid, error=str(e))
                return
            st = self._state.setdefault(rid, _RoomState())
            st.failures += 1
            st.last_error = str(e)
            delay = self._backoff.delay(st.failures, self._rng)
            if isinstance(e, PushError) and e.status in (400, 403):
                delay = max(delay, 600.0)  # a config problem: no point asking every 30 s
            if isinstance(e, PushError) and e.retry_after is not None:
                delay = max(delay, e.retry_after)
            st.retry_at = self._clock.now() + timedelta(seconds=delay)
            log.error(
                "graph push subscription failed; polling continues at the normal pace",
                room=rid,
                error=str(e),
                retry_in_s=round(delay),
            )

    # ------------------------------------------------------------------ the calls

    async def _create(self, room_id: str, mailbox: str, expires_at: datetime) -> None:
        old = self._subs.get(room_id)
        if old is not None and not old.removed:
            # Another mailbox, or expired: drop the old one first so one room has one stream.
            self._forget(room_id)
            self._subs.pop(room_id, None)
            try:
                await self._call("DELETE", f"/subscriptions/{old.subscription_id}", room_id)
            except PushError:
                pass  # expired or gone: nothing to delete
        client_state = secrets.token_urlsafe(32)  # 43 characters; Graph allows 128
        body = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "resource": f"/users/{quote(mailbox, safe='@')}/events",
            "expirationDateTime": _iso(expires_at),
            "clientState": client_state,
        }
        self._pending[client_state] = room_id
        try:
            doc = await self._call("POST", "/subscriptions", room_id, body, mailbox=mailbox)
        finally:
            del self._pending[client_state]
        sub_id = doc.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            raise PushError(room_id, "Graph created a subscription without an id")
        sub = Subscription(
            room_id, mailbox, sub_id, client_state, _expiry(doc, expires_at), removed=False
        )
        self._subs[room_id] = sub
        self._by_id[sub_id] = room_id
        self._granted(room_id, sub.expires_at)
        self.counters["created"] += 1
        log.info("graph subscription created", room=room_id, expires=sub.expires_at.isoformat())

    async def _renew(self, action: Renew) -> None:
        body = {"expirationDateTime": _iso(action.expires_at)}
        doc = await self._call(
            "PATCH", f"/subscriptions/{action.subscription_id}", action.room_id, body
        )
        sub = self._subs.get(action.room_id)
        if sub is None or sub.subscription_id != action.subscription_id:
            return  # replaced meanwhile
        granted = _expiry(doc, action.expires_at)
        self._subs[action.room_id] = replace(sub, expires_at=granted, reauthorize=False)
        self._granted(action.room_id, granted)
        self.counters["renewed"] += 1
        log.info("graph subscription renewed", room=action.room_id)

    async def _delete(self, action: Delete) -> None:
        try:
            await self._call("DELETE", f"/subscriptions/{action.subscription_id}", action.room_id)
        except PushError as e:
            if not e.gone:
                raise
        self._forget(action.room_id)
        self._subs.pop(action.room_id, None)
        self.counters["deleted"] += 1

    async def _sweep_previous(self) -> None:
        """Delete subscriptions a previous run of this agent left (same notificationUrl): their
        clientState died with that process, so their notifications could only be ignored."""
        url: str | None = "/subscriptions"
        stale: list[str] = []
        pages = 0
        try:
            while url is not None and pages < 50:
                pages += 1
                doc = await self._call("GET", url, "subscriptions")
                values = doc.get("value")
                stale.extend(
                    s["id"]
                    for s in (values if isinstance(values, list) else [])
                    if isinstance(s, dict)
                    and s.get("notificationUrl") == self.notification_url
                    and isinstance(s.get("id"), str)
                )
                nxt = doc.get("@odata.nextLink")
                # on graph_url, or Graph's own host behind a reverse proxy (graph_link)
                url = graph_link(nxt, self._graph) if isinstance(nxt, str) else None
            for sub_id in stale:
                try:
                    await self._call("DELETE", f"/subscriptions/{sub_id}", "subscriptions")
                except PushError as e:
                    if not e.gone:
                        raise
        except Exception as e:  # noqa: BLE001 - a failed cleanup must not keep push from starting
            log.warning("could not clear the previous run's subscriptions", error=str(e))
            return
        if stale:
            log.info("previous run's graph subscriptions deleted", count=len(stale))

    def _granted(self, room_id: str, expires_at: datetime) -> None:
        """A success clears the room's failures. Graph may grant less than asked: when that is
        inside the renewal margin, the next renewal waits for half the remaining life instead
        of following at once (and again, and again)."""
        self._state.pop(room_id, None)
        now = self._clock.now()
        if expires_at - now <= self._margin:
            st = self._state[room_id] = _RoomState()
            st.retry_at = now + max((expires_at - now) / 2, timedelta(seconds=1))

    def _forget(self, room_id: str) -> None:
        sub = self._subs.get(room_id)
        if sub is not None:
            self._by_id.pop(sub.subscription_id, None)

    async def _call(
        self,
        method: str,
        path: str,
        room_id: str,
        body: dict[str, Any] | None = None,
        *,
        mailbox: str | None = None,
    ) -> dict[str, Any]:
        url = path if path.startswith(self._graph + "/") else self._graph + path
        renewed = False
        while True:
            token = await self._tokens.token(renew=renewed)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            slot: AbstractAsyncContextManager[None] = (
                self._gates.slot(mailbox) if mailbox is not None else nullcontext()
            )
            try:
                async with asyncio.timeout(self._timeout), slot:
                    status, resp_headers, text = await bounded_request(
                        self._http,
                        method,
                        url,
                        headers,
                        timeout_s=self._timeout,
                        max_body=MAX_BODY_BYTES,
                        content=None if body is None else jsoncodec.dumpb(body),
                    )
            except (httpx.HTTPError, TimeoutError) as e:
                raise PushError(
                    room_id, f"Graph unreachable for {method} {path}: {type(e).__name__}: {e}"
                ) from e
            raw = b"" if text == TOO_LARGE else text.encode()
            if status == 401 and not renewed:
                renewed = True
                continue
            if status in (200, 201):
                try:
                    doc = jsoncodec.loads(raw) if raw else {}
                except jsoncodec.JSONDecodeError as e:
                    raise PushError(room_id, f"Graph answered invalid JSON: {e}") from e
                return doc if isinstance(doc, dict) else {}
            if status in (202, 204):
                return {}
            # A 429 here is the subscription's (its Retry-After is kept per room, on the clock);
            # it does not hold back the mailbox's polls.
            raise _refusal(room_id, method, status, raw, resp_headers, mailbox, self._clock)


def _refusal(
    room_id: str,
    method: str,
    status: int,
    raw: bytes,
    headers: httpx.Headers,
    mailbox: str | None,
    clock: Clock,
) -> PushError:
    code, message = _error(raw)
    what = f"HTTP {status} {code}: {message[:200]}".rstrip(": ")
    if status == 404:
        return PushError(room_id, f"subscription not found ({what})", status=404, gone=True)
    if status == 403:
        return PushError(
            room_id,
            f"Graph refused the subscription on {mailbox or 'the room'} ({what}); grant the app "
            "the application permission Calendars.Read with admin consent and check that the "
            "Exchange application access policy includes this mailbox",
            status=403,
        )
    if status == 400 and method == "POST" and ("validation" in f"{code} {message}".lower()):
        return PushError(
            room_id,
            f"Graph could not validate the notification URL ({what}); notification_url must be "
            f"a public HTTPS URL whose reverse proxy forwards {NOTIFY_PATH} and {LIFECYCLE_PATH} "
            "to the agent's local API, answering within 10 s",
            status=400,
        )
    if status == 429:
        ra = parse_retry_after(headers.get("retry-after"), clock.now().timestamp())
        return PushError(room_id, f"throttled ({what})", status=429, retry_after=ra)
    return PushError(room_id, f"Graph refused {method} /subscriptions ({what})", status=status)


def _error(raw: bytes) -> tuple[str, str]:
    try:
        doc = jsoncodec.loads(raw) if raw else None
    except jsoncodec.JSONDecodeError:
        return "", raw[:200].decode("utf-8", "replace")
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return "", ""
    return str(err.get("code", "")), str(err.get("message", ""))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _expiry(doc: dict[str, Any], asked: datetime) -> datetime:
    """Graph's answer wins (it may shorten the lifetime); ours when it says nothing usable."""
    value = doc.get("expirationDateTime")
    if isinstance(value, str):
        try:
            return parse_utc(value)
        except ValueError:
            pass
    return asked
