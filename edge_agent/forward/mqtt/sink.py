"""The ``mqtt`` sink: forward the outbox to a broker at QoS 1 (topics: :mod:`.topics`).

At least once. An event counts as delivered to this sink only when the broker has PUBACKed
every message it maps to (events topic and, for availability and snapshots, the retained
topic): :meth:`MqttSink.send` returns :class:`Delivered` only then, and the drainer marks the
events done in the outbox only on that outcome. If the link drops with PUBACKs outstanding,
``send`` returns :class:`Retry`; the events are still undelivered in the outbox, and after the
reconnect the drainer hands the same batch over again and it is published again, from its
first event. So nothing PUBACK-less is ever marked done, and nothing is lost across broker
restarts, network loss or agent restarts (the outbox is on disk). The price is duplicates: a
message the broker accepted but whose PUBACK was lost is published twice, and QoS 1 itself may
duplicate. Receivers drop duplicates by ``data.event_id``. The MQTT session is clean on
every connect (the durable queue is the outbox, not the broker's session state), and every
connection gets a fresh paho client (:func:`.link.open_link`), so paho never replays anything
on its own.

Under MQTT 5 a PUBACK may carry a failure reason code (e.g. 0x87 "Not authorized" when an ACL
forbids the topic); that is not a delivery: permanent refusals give :class:`Reject` (dead
letter at once), others :class:`Retry`. MQTT 3.1.1 has no such code; mosquitto then
PUBACKs and silently drops a message the ACL forbids, which no client can detect.

Retained state is the agent's: the sink keeps the last retained message it published for each
device (``availability``, ``bookings``; one entry per device and leaf, bounded by
``max_retained_kept``) and publishes them again with every ``bridge/health`` message, and after
every connect. Another client that overwrites a device's retained window (or a broker that
lost it) is corrected within one ``health_interval_s``. The cost: per interval, one message
per device and leaf (1,000 devices with 5 KiB windows: ~5 MB a minute at the 60 s default).
A kept message of :data:`PACK_MIN_BYTES` or more is held deflated (:class:`_Deflated`): a
window is JSON that repeats its keys in every booking, so it deflates ~7x. Held as published,
the windows were ~8 MiB of the agent's heap at 1,000 devices (``bench/bench_pipeline.py
--devices 1000``: 1,045 payloads of ~7.8 KiB alive once connected). Measured on a 3.8 KiB
window of 13 bookings: deflated to 0.5 KiB in ~13 us when it changes, inflated in ~6 us per
message at each refresh.

Refused credentials, TLS and config errors are retried with a backoff from a few seconds up to
``refused_retry_s`` (60 s): slow enough not to hammer a broker, soon enough after the broker
is fixed. :meth:`MqttSink.reconnect_now` (the agent's SIGHUP reload) retries at once, with the
reloaded credentials when given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import structlog
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.clock import Clock, system_clock, utc_iso
from edge_agent.forward.base import Delivered, OutboxEvent, Outcome, Reject, Retry, SinkStats
from edge_agent.forward.mqtt.commands import SensorCommands
from edge_agent.forward.mqtt.discovery import DEFAULT_PREFIX, RoomTopics
from edge_agent.forward.mqtt.errors import PUBACK_PERMANENT, BrokerError
from edge_agent.forward.mqtt.link import (
    BrokerLink,
    BrokerLinkLost,
    PubackGroup,
    broker_settings,
    open_link,
    raise_if_cancelling,
    read_retained,
)
from edge_agent.forward.mqtt.topics import OFFLINE, ONLINE, Publication, Topics, publications

log = structlog.get_logger(__name__)


def _seconds(delay: float) -> str:
    return f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"


PACK_MIN_BYTES = 1024
"""A kept retained message this large or larger is held deflated (smaller ones gain little)."""


class _Deflated(bytes):
    """A kept retained message, deflated (zlib level 1: a window shrinks ~7x)."""

    __slots__ = ()

    @classmethod
    def pack(cls, payload: bytes) -> bytes | _Deflated:
        if len(payload) < PACK_MIN_BYTES:
            return payload
        packed = zlib.compress(payload, 1)
        return cls(packed) if len(packed) < len(payload) else payload

    def unpack(self) -> bytes:
        return zlib.decompress(self)


def _published(kept: bytes) -> bytes:
    """A kept retained message as it was published."""
    return kept.unpack() if type(kept) is _Deflated else kept


class MqttSink:
    """Forwards outbox events to an MQTT broker at QoS 1; see the module docstring.

    Args:
        url: ``mqtt://host:port`` (default port 1883) or ``mqtts://host:port`` (8883; TLS with
            the server certificate and its host name verified).
        site: the site name, used in the default base topic.
        client_id: MQTT client id; one per agent (two agents with one id take turns kicking
            each other off). Default ``edge-agent-<site>``.
        username, password: already resolved from the environment or a credentials file.
        password_source: where the password came from, as the config names it (e.g.
            ``"password_file /etc/roomos-edge/mqtt.password"``): the refusal hint names it.
        ca_file: CA bundle that signed the broker's certificate (default: the system store).
        cert_file, key_file: a client certificate, for brokers that require one.
        keepalive: seconds; the broker fires the will after 1.5 x this without traffic.
        base_topic: default ``roomos-edge/<site>``.
        protocol: ``"3.1.1"`` or ``"5"``.
        health: returns the agent's figures for ``bridge/health`` (must not block).
        health_interval_s: seconds between ``bridge/health`` messages.
        max_batch: events handed to one :meth:`send`.
        max_in_flight: publishes awaiting PUBACK, across all devices (20-100 is the sweet spot).
        connect_timeout_s: TCP + TLS + CONNACK.
        publish_timeout_s: a batch with a PUBACK still missing after this is retried.
        backoff_initial_s, backoff_max_s: reconnect delays (jittered, exponential).
        refused_retry_s: the longest delay between attempts after the broker refused the
            credentials or TLS failed (a person has to fix something; hammering the broker does
            not help, but once it is fixed the agent should be back soon). The delays grow from
            a few seconds to this cap; :meth:`reconnect_now` cuts the wait short.
        max_retained_kept: retained messages kept for the health-timer refresh (two per
            device; the oldest updated one is dropped past it).
        stable_after_s: a link that lived this long resets the backoff.
        clock: the agent's injected clock, for the wall times it reports (``connected_since``,
            the health ``timestamp``, ``last_error_at``).
    """

    name = "mqtt"
    REFUSED_RETRY_MAX_S = 60.0
    """The default cap of the delay after a refusal (was a fixed ~4 min growing to 20)."""
    MAX_RETAINED_KEPT = 20_000
    """Two retained topics per device, for 10,000 devices."""

    def __init__(
        self,
        url: str,
        *,
        site: str,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        password_source: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        keepalive: int = 30,
        base_topic: str | None = None,
        protocol: Literal["3.1.1", "5"] = "5",
        health: Callable[[], dict[str, Any]] | None = None,
        health_interval_s: float = 60.0,
        max_batch: int = 50,
        max_in_flight: int = 50,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 30.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        refused_retry_s: float = REFUSED_RETRY_MAX_S,
        stable_after_s: float = 30.0,
        max_retained_kept: int = MAX_RETAINED_KEPT,
        discovery: bool = False,
        discovery_prefix: str = DEFAULT_PREFIX,
        commands: Callable[[str], SensorCommands] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self._clock = clock  # the wall time it reports (connected_since, health, last error)
        self._settings = broker_settings(
            url,
            client_id=client_id or f"edge-agent-{site}",
            username=username,
            password=password,
            password_source=password_source,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            keepalive=keepalive,
            protocol=protocol,
            connect_timeout_s=connect_timeout_s,
        )
        self._addr = self._settings.address
        self._client_id = self._settings.client_id
        self._keepalive = keepalive
        self._protocol = protocol
        self.max_batch = max_batch
        self._site = site
        self._topics = Topics((base_topic or f"roomos-edge/{site}").rstrip("/"))
        # The room list, the clearing of removed rooms, Home Assistant discovery (.discovery).
        self._rooms = RoomTopics(
            self._topics, site=site, discovery=discovery, prefix=discovery_prefix
        )
        self._health = health
        self._health_interval_s = health_interval_s
        self._max_in_flight = max_in_flight
        self._publish_timeout_s = publish_timeout_s
        self._backoff = Backoff(initial=backoff_initial_s, maximum=backoff_max_s)
        self._refused_backoff = Backoff(initial=min(5.0, refused_retry_s), maximum=refused_retry_s)
        self._stable_after_s = stable_after_s
        # Sensor commands in (occupancy/set): built on the base topic; see .commands.
        self.commands = commands(self._topics.base) if commands is not None else None

        self._link: BrokerLink | None = None
        self._closing = asyncio.Event()
        self._poke = asyncio.Event()  # reconnect_now(): end the wait before the next attempt
        # The last retained message published per topic, refreshed on the health timer; dict
        # order is the update order, so the first entry is the one to drop past the bound.
        self._retained: dict[str, bytes | _Deflated] = {}
        self._max_retained = max(1, max_retained_kept)
        self._swept = False  # removed rooms' leftovers on the broker cleared once (_sweep_once)
        self._stopped = asyncio.Event()
        self._running = False
        self._started = time.monotonic()
        self._in_flight = 0
        self._connected_since: str | None = None
        self._connects = 0
        self.stats = SinkStats()
        self._log = log.bind(sink=self.name, broker=str(self._addr), client_id=self._client_id)

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def last_error(self) -> str | None:
        """The last connection or delivery problem, as a sentence for a person."""
        return self.stats.last_error

    def ready(self) -> bool:
        return self._link is not None and self._link.up

    def _note_error(self, text: str) -> None:
        """A connection or delivery problem, with its time (``/readyz`` sinks, ``status``)."""
        self.stats.last_error = text
        self.stats.last_error_at = utc_iso(self._clock.now())

    def _recovered(self) -> None:
        """Connected again: the last error becomes ``previous_error``, as for devices."""
        st = self.stats
        if st.last_error is not None:
            st.previous_error, st.previous_error_at = st.last_error, st.last_error_at
            st.last_error = st.last_error_at = None

    # --- delivery ----------------------------------------------------------------------------

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        """Publish one device's events in order, pipelined; Delivered once every PUBACK is in.

        Cancelling is safe: the events stay undelivered and are published again next time.
        """
        link = self._link
        if link is None or not link.up:
            return self._retry(f"mqtt: not connected to broker {self._addr}", count=False)
        group = PubackGroup(asyncio.get_running_loop(), link.slots)
        try:
            try:
                for event in events:
                    for pub in self._rooms.publications(event, publications(event, self._topics)):
                        await link.publish_in(group, pub.topic, pub.payload, retain=pub.retain)
                        if pub.retain:
                            # At publish time, in publish order: the refresh never sends an
                            # older window after a newer one.
                            self.keep_retained(pub.topic, pub.payload)
            except ValueError as exc:
                return Reject(f"mqtt: {exc}")
            sent = group.sent
            self._in_flight += sent  # the health message's figure: publishes awaiting PUBACK
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    await group.finish()
            except TimeoutError:
                return self._retry(
                    f"mqtt: {group.left} of {sent} PUBACKs from broker {self._addr} "
                    f"missing after {self._publish_timeout_s:g} s"
                )
            finally:
                self._in_flight -= sent
        except BrokerLinkLost as exc:
            return self._retry(f"mqtt: link to broker {self._addr} lost before PUBACK ({exc})")
        finally:
            group.abandon()  # frees the slots still held; a late PUBACK finds no waiter
        if group.failure is not None:
            reason = group.failure[1]
            text = f"mqtt: broker {self._addr} refused a publish ({reason.getName()})"
            self._note_error(text)
            if reason.value in PUBACK_PERMANENT:
                return Reject(text)
            return self._retry(text)
        self.stats.delivered += len(events)
        return Delivered()

    def keep_retained(self, topic: str, payload: bytes) -> None:
        """Remember ``payload`` as the agent's retained message on ``topic`` (bounded; a large
        one deflated, see the module docstring)."""
        self._retained.pop(topic, None)
        self._retained[topic] = _Deflated.pack(payload)
        while len(self._retained) > self._max_retained:
            del self._retained[next(iter(self._retained))]

    def retained_kept(self) -> dict[str, bytes]:
        """The retained messages the health timer publishes again (a copy, as published)."""
        return {t: _published(p) for t, p in self._retained.items()}

    async def set_rooms(
        self,
        rooms: Iterable[str],
        calendar_rooms: Mapping[str, str] | None = None,
        *,
        now: datetime | None = None,
    ) -> datetime | None:
        """The rooms that exist now (the agent: on start, after every reload, when a calendar
        source's room list changes). ``rooms``: the device rooms; ``calendar_rooms``: the
        calendar-only rooms, id -> source (``None``: not known yet, left as they were).
        Removed rooms' retained topics are cleared, discovery configs published
        (:mod:`.discovery`); what the broker has not acknowledged is sent again after the next
        connect. The first time a list and a link meet, rooms the broker still retains but the
        list lacks (removed while the agent was stopped) are cleared too. ``now``: the calendar
        rooms' ``booked`` / ``next_booking`` states are brought up to this time (a calendar sends
        nothing when a meeting starts). Returns when those states change next by time alone
        (call again then, or on a timer). Cancelling is safe."""
        first_calendar = calendar_rooms is not None and not self._rooms.calendar_known
        for topic in self._rooms.set_rooms(rooms, calendar_rooms):
            self._retained.pop(topic, None)
        if first_calendar:
            self._swept = False  # the sweep so far read devices/ only; rooms/ is known now
        if now is not None:
            for pub in self._rooms.tick(now):
                self.keep_retained(pub.topic, pub.payload)  # the health refresh sends these
        link = self._link
        if link is not None and link.up:
            with contextlib.suppress(BrokerLinkLost):
                await self._announce(link)
                await self._sweep_once(link)
        return self._rooms.next_change()

    async def _sweep_once(self, link: BrokerLink) -> None:
        """Once per process, when the room list is known: clear what the broker still retains
        for rooms removed while the agent was stopped (read as a late subscriber would, on a
        connection of its own)."""
        if self._swept or not self._rooms.known:
            return
        self._swept = True
        settings = dataclasses.replace(self._settings, client_id=f"{self._client_id}-sweep")
        try:
            seen = await read_retained(settings, self._rooms.sweep_filter, timeout_s=10.0)
        except (BrokerError, BrokerLinkLost, TimeoutError) as exc:
            self._log.warning(
                "mqtt: cannot read the retained topics of removed rooms", error=str(exc)
            )
            return
        for topic in self._rooms.clear_unknown(seen):
            self._retained.pop(topic, None)
        await self._announce(link)

    async def _announce(self, link: BrokerLink, *, reconnected: bool = False) -> None:
        """Publish what the room list made due; does not wait for the PUBACKs (each one marks
        its message done)."""
        for pub in self._rooms.due(reconnected=reconnected):
            await link.slots.acquire()
            try:
                fut = link.publish(pub.topic, pub.payload, retain=True)
            except BaseException:
                link.slots.release()
                raise
            fut.add_done_callback(functools.partial(self._announced, link.slots, pub))

    def _announced(
        self, slots: asyncio.Semaphore, pub: Publication, fut: asyncio.Future[ReasonCode]
    ) -> None:
        slots.release()
        if not fut.cancelled() and fut.exception() is None and not fut.result().is_failure:
            self._rooms.acknowledged(pub)

    def _retry(self, reason: str, count: bool = True) -> Retry:
        if count:
            self.stats.retried += 1
        return Retry(reason)

    # --- the connection loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, keep connected, reconnect with jittered backoff until :meth:`close`.

        Cancelling is safe: a live link says ``offline`` (best effort) and disconnects.
        """
        if self._running:
            raise RuntimeError("MqttSink.run() is already running (one connection loop per sink)")
        self._running = True
        attempt = refused = 0
        try:
            while not self._closing.is_set():
                attempt += 1
                # A poke during this attempt (which may use the old credentials) ends the wait
                # after it.
                self._poke.clear()
                try:
                    lived = await self._connect_and_serve()
                except _Closed:
                    break
                except BrokerError as exc:
                    if exc.kind in ("auth", "tls", "config"):
                        refused += 1
                        delay = max(
                            self._backoff.delay(attempt), self._refused_backoff.delay(refused)
                        )
                        level = "error"
                    else:
                        delay = self._backoff.delay(attempt)
                        level = "warning"
                    text = f"{exc}; retrying in {_seconds(delay)} s"
                    self._note_error(text)
                    getattr(self._log, level)(text, kind=exc.kind, attempt=attempt)
                else:
                    refused = 0
                    if self._closing.is_set():
                        break
                    if lived >= self._stable_after_s:
                        attempt = 1
                    delay = self._backoff.delay(attempt)
                    self._log.warning(
                        "mqtt: link to broker lost; reconnecting",
                        reason=self.stats.last_error,
                        retry_in_s=round(delay, 3),
                    )
                if await self._wait_before_retry(delay):
                    self._log.info("mqtt: reconnecting now (reload)")
                    attempt = refused = 0
        finally:
            self._running = False
            self._stopped.set()

    async def _wait_before_retry(self, delay: float) -> bool:
        """Sleep ``delay`` unless closing or poked; True when poked."""
        tag = f"mqtt[{self._client_id}]"
        closing = asyncio.create_task(self._closing.wait(), name=f"{tag}.wait.closing")
        poked = asyncio.create_task(self._poke.wait(), name=f"{tag}.wait.poked")
        try:
            await asyncio.wait([closing, poked], timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            poked.cancel()
        return self._poke.is_set() and not self._closing.is_set()

    def reconnect_now(self, *, credentials: tuple[str | None, str | None] | None = None) -> None:
        """Retry connecting at once instead of waiting out the backoff (the agent's SIGHUP).

        ``credentials``: ``(username, password)`` as reloaded, used from the next attempt on.
        A link that is up is left alone (it keeps working; new credentials apply on the next
        connect).
        """
        if credentials is not None:
            username, password = credentials
            self._settings = dataclasses.replace(
                self._settings, username=username, password=password
            )
        if not self.ready():
            self._poke.set()

    async def _connect_and_serve(self) -> float:
        """One connection's life; returns how long it was up. Raises BrokerError."""
        link = await self._open()
        up_at = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    await link.publish(self._topics.bridge_state, ONLINE, retain=True)
            except (BrokerLinkLost, TimeoutError) as exc:
                raise_if_cancelling()
                link.abort(f"no PUBACK for the online state: {exc!r}")
                raise BrokerError(
                    f"mqtt: broker {self._addr} did not acknowledge {self._topics.bridge_state} "
                    f"({exc!r})",
                    "unreachable",
                ) from None
            raise_if_cancelling()  # a PUBACK that arrived with the cancellation (3.11)
            self._connects += 1
            self._connected_since = utc_iso(self._clock.now())
            self._link = link
            self._poke.clear()  # connected: a poke during the connect has done its job
            self._recovered()
            self._log.info(
                "mqtt: connected",
                protocol=self._protocol,
                tls=self._addr.tls,
                in_flight_window=link.window,
                base_topic=self._topics.base,
            )
            with contextlib.suppress(BrokerLinkLost):
                await self._announce(link, reconnected=True)
            tag = f"mqtt[{self._client_id}]"
            async with asyncio.TaskGroup() as tg:
                keepalive = tg.create_task(
                    link.keepalive(min(1.0, self._keepalive / 4)), name=f"{tag}.keepalive"
                )
                health = tg.create_task(self._health_loop(link), name=f"{tag}.health")
                commands = []
                if self.commands is not None:
                    await self.commands.subscribe(link, self._publish_timeout_s)
                    raise_if_cancelling()
                    commands.append(tg.create_task(self.commands.run(), name=f"{tag}.commands"))
                closing = tg.create_task(self._closing.wait(), name=f"{tag}.closing")
                watched: list[asyncio.Future[Any]] = [link.lost, closing]
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                self._link = None
                for task in (keepalive, health, closing, *commands):
                    task.cancel()
            if link.lost.done():
                self._note_error(f"mqtt: link to broker {self._addr} lost ({link.lost.result()})")
            else:
                await self._goodbye(link)
        except asyncio.CancelledError:
            self._link = None
            if link.up:
                await self._goodbye(link)
            raise
        finally:
            self._link = None
            link.abort("closed")
        return time.monotonic() - up_at

    async def _open(self) -> BrokerLink:
        """:func:`open_link`, given up at once when :meth:`close` is called (a broker that
        accepts TCP and never answers would hold the close for ``connect_timeout_s``).
        Raises BrokerError, or ``_Closed``."""
        will = Publication(self._topics.bridge_state, OFFLINE, retain=True)
        tag = f"mqtt[{self._client_id}]"
        opening = asyncio.create_task(
            open_link(
                self._settings,
                will=will,
                max_in_flight=self._max_in_flight,
                on_message=self.commands.on_message if self.commands is not None else None,
            ),
            name=f"{tag}.connect",
        )
        closing = asyncio.create_task(self._closing.wait(), name=f"{tag}.connect.closing")
        try:
            await asyncio.wait([opening, closing], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _give_up(opening)  # cancelled: no link may outlive this
            raise
        finally:
            closing.cancel()
        if self._closing.is_set() or not opening.done():
            await _give_up(opening)
            raise_if_cancelling()
            raise _Closed
        return opening.result()  # the link, or open_link's BrokerError

    async def probe(self, *, client_id: str, timeout_s: float) -> str:
        """Connect once as this sink would, then disconnect: what ``check-config`` reports.

        Same TLS, credentials, protocol version and errors as :meth:`run`, but under
        ``client_id`` (the agent's own id would take over a running agent's session), with no
        will and nothing published (a check must not say ``offline`` for a running agent).
        Returns a sentence for a person; raises :class:`BrokerError` (its text says what to fix).
        """
        settings = dataclasses.replace(
            self._settings, client_id=client_id, connect_timeout_s=timeout_s
        )
        link = await open_link(settings, max_in_flight=1)
        await link.close()
        tls = "TLS, " if self._addr.tls else ""
        return f"CONNACK ({tls}{settings.protocol_name})"

    # --- health and goodbye ------------------------------------------------------------------

    async def _health_loop(self, link: BrokerLink) -> None:
        while link.up:
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    health = self._health_payload()
                    await link.publish(self._topics.bridge_health, health, retain=False)
                await self._refresh_retained(link)
                await self._sweep_once(link)
            except (BrokerLinkLost, TimeoutError):
                return
            await asyncio.sleep(self._health_interval_s)

    async def _refresh_retained(self, link: BrokerLink) -> None:
        """Publish every kept retained message again (a client may have overwritten it, or a
        broker without persistence lost it). Takes the link's slots like events do, so it
        never passes the broker's Receive Maximum; does not wait for the PUBACKs."""
        for topic, payload in list(self._retained.items()):
            await link.slots.acquire()
            try:
                fut = link.publish(topic, _published(payload), retain=True)
            except BaseException:
                link.slots.release()
                raise
            fut.add_done_callback(functools.partial(self._refreshed, link.slots, topic, payload))

    def _refreshed(
        self, slots: asyncio.Semaphore, topic: str, payload: bytes, fut: asyncio.Future[ReasonCode]
    ) -> None:
        slots.release()
        if fut.cancelled() or fut.exception() is not None:
            return
        reason = fut.result()
        if reason.is_failure and reason.value in PUBACK_PERMANENT:
            # The broker will never take it (an ACL): stop resending it every interval.
            if self._retained.get(topic) == payload:
                del self._retained[topic]
            self._log.warning(
                "mqtt: broker refused a retained refresh; not refreshing it again",
                topic=topic,
                reason=reason.getName(),
            )

    def _health_payload(self) -> bytes:
        doc: dict[str, Any] = {
            "timestamp": utc_iso(self._clock.now()),
            "site": self._site,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "mqtt": {
                "connects": self._connects,
                "connected_since": self._connected_since,
                "delivered": self.stats.delivered,
                "retried": self.stats.retried,
                "in_flight": self._in_flight,
            },
        }
        if self._health is not None:
            try:
                doc.update(self._health())
            except Exception:  # noqa: BLE001 - a broken callback must not take the link down
                self._log.exception("mqtt: health callback failed")
        return jsoncodec.dumpb(doc)

    async def _goodbye(self, link: BrokerLink) -> None:
        try:
            async with asyncio.timeout(min(self._publish_timeout_s, 5.0)):
                await link.publish(self._topics.bridge_state, OFFLINE, retain=True)
        except (BrokerLinkLost, TimeoutError) as exc:
            self._log.warning("mqtt: could not publish the offline state", error=repr(exc))
            return
        link.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(link.lost)
        self._log.info("mqtt: disconnected")

    async def close(self, timeout_s: float | None = None) -> None:
        """Say ``offline`` (retained), disconnect, and let :meth:`run` return.

        Bounded: a connect in progress is given up at once, the goodbye waits at most ~7 s
        (5 s for the PUBACK of ``offline``, 2 s for the DISCONNECT); past ``timeout_s``
        (default: ``publish_timeout_s`` + 10 s, a PUBACK wait of :meth:`run` that is not
        the goodbye's) it returns anyway, logged, and :meth:`run` ends on its own later.
        Cancelling is safe; the broker then fires the will.
        """
        self._closing.set()
        if not self._running:
            return
        limit = self._publish_timeout_s + 10.0 if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._stopped.wait()
        except TimeoutError:
            self._log.warning("mqtt: the connection loop did not stop in time", waited_s=limit)


async def _give_up(opening: asyncio.Task[BrokerLink]) -> None:
    """Stop a connect in progress (``open_link`` drops whatever its connect thread still
    opens; cancelling it returns at once) or close the link it already made."""
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError, BrokerError):
        (await opening).abort("closing")


class _Closed(Exception):
    """:meth:`MqttSink.close` was called while connecting: the loop ends, nothing to report."""


__all__ = ["MqttSink"]
