"""The drainer: moves one sink's share of the outbox to the sink, in order per device.

One drainer per sink. It owns the sink's delivery schedule (:mod:`edge_agent.forward.schedule`:
cursors, the round-robin ready ring, retry state), loaded from the store when it starts. It
asks the schedule which devices to serve (up to ``max_in_flight`` at a time; each device has at
most one batch in flight, so its order is kept), reads their next events from the store, sends
each batch with ``sink.send()``, and records the outcome in the schedule at once and in the
store behind (group commit):

- ``Delivered``: the device's progress moves past the batch.
- ``Retry``: the device backs off (``Backoff`` jittered exponential, capped; never earlier than
  the receiver's ``Retry-After``), then tries the whole batch again. The attempts and due time
  are stored, so a restart keeps the schedule. Only that device waits; the others keep flowing.
- ``Reject``: dead-lettered at once: the receiver refused the event for good (DESIGN.md:
  "other 4xx dead letter"), and sending it again would only hold its device's later events
  back. A rejected batch of several events is retried one event at a time, so only the poison
  event is dead-lettered.
- ``Gone``: the sink is stopped with an ERROR log and ``stopped_reason``; the events stay in
  the outbox.
- An event older than ``ttl_s`` is dead-lettered (reason ``"ttl expired"``) instead of sent.
- The receiver is back: when a device's batch is delivered after retries, every other device
  backing off from a ``Retry`` (not a ``Reject``) is due at once (or at its ``Retry-After``,
  if that is later). The backoff spares a receiver that is down; once it answers again,
  waiting out each device's timer (up to minutes) only delays the backlog.
- Probing an outage: while devices back off from a ``Retry`` and none has tried for
  ``probe_every_s`` (the backoff's first delay, 1 s by default), the one due soonest tries now
  (its stored retry state keeps the later time). A receiver that is down sees about one
  request per ``probe_every_s`` from the whole fleet, not one per device; once it answers, the
  device that got through makes the others due (above), so a backlog starts draining within
  ``probe_every_s`` of the receiver's return instead of at the soonest device timer (up to
  minutes after a long outage).

Reading ahead: in a backlog (the last batches chosen included a full one) and while batches are
in flight, the drainer reads the next batches of the streams it will serve next
(:meth:`DeliverySchedule.peek`, the ring's order), for up to ``read_ahead`` streams in one store
read. When a slot frees, the next batch is in hand: no store read (thread hop, query) between
one POST and the next. A batch read ahead is used only if it is full and its stream's cursor is
still where it was read from (a failed send leaves it there; a delivered one moves it, and the
stale batch is dropped; a short one is read again, as more may have come behind it); a stream's
later rows only ever come after the ones read (seqs grow), so the rows read ahead are still the
stream's next ones (a row the outbox cap moved to the dead letter meanwhile may still be sent
once: at least once). A batch that is not in hand when its slot frees is waited for when the
read ahead under way has it; otherwise it is read with the next batches ahead in the same
query. (Read one by one, behind the read ahead on the same connection, most batches of a
100,000-event backlog were read on demand, the loop waiting ~1 ms each time, and what was read
ahead was mostly dropped as stale.)
Memory: at most ``read_ahead`` batches of ``sink.max_batch`` events (32 of 20 for a webhook
with the defaults and ``batch_max = 20``: 640 events, in a backlog only).

The drainer wakes as soon as the store commits new events (``wakeup``; ``take_committed`` says
which devices have them), and otherwise sleeps until the next due retry: no polling while idle,
no sleep while work is waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from edge_agent.backoff import Backoff
from edge_agent.clock import utc_iso
from edge_agent.forward.base import (
    Delivered,
    Gone,
    Outcome,
    Reject,
    Retry,
    Sink,
    SinkStats,
)
from edge_agent.forward.schedule import DeliverySchedule, OutboxEvent, StreamRead
from edge_agent.metrics import DELIVERIES, DELIVERY_LATENCY
from edge_agent.store import StoreBackend, StoreError

log = structlog.get_logger(__name__)

DEFAULT_BACKOFF = Backoff(initial=1.0, maximum=300.0, factor=2.0, jitter=0.2)


class Drainer:
    """Delivers the outbox to one sink. Run it with :meth:`run` in the agent's TaskGroup."""

    def __init__(
        self,
        store: StoreBackend,
        sink: Sink,
        *,
        max_in_flight: int = 8,
        read_ahead: int | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        ttl_s: float = 7 * 24 * 3600.0,
        not_ready_poll_s: float = 0.05,
        probe_every_s: float | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """
        Args:
            store: the open store; ``sink.name`` must be one of its sinks.
            sink: where to deliver.
            max_in_flight: batches (devices) in flight at once. Keep it small for HTTP: httpx
                collapses past ~50 in flight per host (DESIGN.md); 8 is the webhook default.
            read_ahead: most streams whose next batch is read ahead (module docstring);
                default ``4 * max_in_flight`` (a read comes back after a few loop turns and
                several ms: at ``2 *`` a 100,000-event backlog's slots waited for it ~1.7 s in
                all, ~1.1 s at ``4 *``); 0 turns reading ahead off.
            backoff: the retry schedule (delay before attempt n).
            ttl_s: an event older than this is dead-lettered instead of sent.
            not_ready_poll_s: how often to look again while ``sink.ready()`` is false.
            probe_every_s: during an outage, the longest time without a try (see the module
                docstring); default: ``backoff``'s first delay.
            clock: unix-seconds wall clock.
            rng: for the backoff jitter (tests).
        """
        if sink.name not in store.sinks:
            raise ValueError(f"sink {sink.name!r} is not configured in the store {store.sinks}")
        self._store = store
        self._sink = sink
        self.name = sink.name
        self._max_in_flight = max(1, max_in_flight)
        self._read_ahead = 4 * self._max_in_flight if read_ahead is None else max(0, read_ahead)
        # stream -> (the read it was made with, its events): the next batches, read ahead.
        self._ahead: dict[str, tuple[StreamRead, list[OutboxEvent]]] = {}
        # The read ahead under way (at most one), and the streams it reads.
        self._ahead_task: asyncio.Task[None] | None = None
        self._ahead_reading: frozenset[str] = frozenset()
        self._backlog = False  # the last batches chosen included a full one
        self._backoff = backoff
        self._ttl_s = ttl_s
        self._not_ready_poll_s = not_ready_poll_s
        self._probe_every_s = backoff.initial if probe_every_s is None else probe_every_s
        self._last_try = 0.0  # unix time of the last Retry outcome or probe
        self._time = clock
        self._rng = rng
        self._in_flight: set[str] = set()
        # Devices backing off from a Retry: device -> not before (its Retry-After, else 0).
        self._outage: dict[str, float] = {}
        self._schedule = DeliverySchedule()  # replaced by the stored one when run() starts
        self._wake = store.wakeup(sink.name)
        self._stats = SinkStats()
        self._stopped_reason: str | None = None
        self._log = log.bind(sink=sink.name)
        # The labelled children of the per-batch metrics, looked up once.
        self._delivered_ok = DELIVERIES.labels(sink=sink.name, result="ok")
        self._latency = DELIVERY_LATENCY.labels(sink=sink.name)

    # -- state for the local API --------------------------------------------------------------

    @property
    def stopped_reason(self) -> str | None:
        """Why the sink was stopped for good (``None`` while it runs)."""
        return self._stopped_reason

    def ready(self) -> bool:
        return self._stopped_reason is None and self._sink.ready()

    def stats(self) -> SinkStats:
        """Counters and the last error with its time (UTC ISO). A delivery since the error
        means the sink recovered: the error shows as ``previous_error``, ``last_error`` is null;
        a gone endpoint's error stays (nothing is delivered after it)."""
        s = self._stats
        s.ready = self.ready()
        s.stopped_reason = self._stopped_reason
        s.in_flight = len(self._in_flight)
        return s

    def _note_error(self, reason: str) -> None:
        self._stats.last_error = reason
        self._stats.last_error_at = utc_iso(datetime.fromtimestamp(self._time(), UTC))

    def _recovered(self) -> None:
        s = self._stats
        if s.last_error is not None:
            s.previous_error, s.previous_error_at = s.last_error, s.last_error_at
            s.last_error = s.last_error_at = None

    def retrying(self) -> dict[str, dict[str, Any]]:
        """Devices backing off: ``{device: {seq, attempts, next_attempt_at, error}}``."""
        return self._schedule.retrying()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the sink's connection loop and deliver until cancelled or the sink is gone.

        Cancelling it is safe: batches in flight are simply not marked and are sent again
        later (delivery is at least once). Returns after a ``Gone`` outcome, once the batches
        in flight have finished. The caller owns the sink and closes it.
        """
        self._schedule = DeliverySchedule(await self._store.load_progress(self.name))
        async with asyncio.TaskGroup() as tg:
            sink_task = tg.create_task(self._sink.run(), name=f"drainer[{self.name}].sink")
            await self._loop(tg)
            sink_task.cancel()

    async def _loop(self, tg: asyncio.TaskGroup) -> None:
        sink, schedule = self._sink, self._schedule
        while self._stopped_reason is None:
            if not sink.ready():
                await asyncio.sleep(self._not_ready_poll_s)
                continue
            free = self._max_in_flight - len(self._in_flight)
            if free > 0:
                # Cleared before reading, so a commit landing during the read is not missed.
                self._wake.clear()
                batches = await self._next_batches(free)
                for batch in batches:
                    device = batch[0].device_id
                    self._in_flight.add(device)
                    tg.create_task(
                        self._deliver(batch), name=f"drainer[{self.name}].deliver[{device}]"
                    )
                # Read ahead only in a backlog (a full batch chosen): while the drainer keeps up,
                # the store answers from memory and a batch read ahead would only be smaller
                # than the one chosen when its slot frees (more requests per event).
                self._backlog = any(len(b) >= self._sink.max_batch for b in batches)
                if self._read_ahead and self._backlog:
                    self._read_ahead_soon(tg)
                if batches:
                    await asyncio.sleep(0)  # let the sends start before reading more
                    continue
            else:
                self._wake.clear()  # all slots busy: a finishing send wakes us
                if self._read_ahead and self._backlog:
                    self._read_ahead_soon(tg)
            # With every slot busy only a finishing send can help: no timer then.
            due = schedule.next_due(exclude=self._in_flight) if free > 0 else None
            if free > 0 and self._outage:
                probe_at = self._probe()
                due = probe_at if due is None else min(due, probe_at)
            timeout = None if due is None else max(0.0, due - self._time()) + 0.001
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _probe(self) -> float:
        """During an outage: make the device due soonest try now if nobody tried for
        ``probe_every_s``; returns when to look again."""
        now = self._time()
        probe_at = self._last_try + self._probe_every_s
        if now < probe_at:
            return probe_at
        if any(d in self._outage for d in self._in_flight):
            return now + self._probe_every_s  # a try is under way
        ready = [d for d, not_before in self._outage.items() if not_before <= now]
        device = self._schedule.soonest_retry(ready)
        if device is None:
            return now + self._probe_every_s
        self._schedule.due_by(device, now)
        self._last_try = now
        return now

    async def _next_batches(self, free: int) -> list[list[OutboxEvent]]:
        """Up to ``free`` batches, one per device; keeps choosing while devices in the ready
        ring turn out to have nothing left, so idle devices never hide the ones with work."""
        schedule = self._schedule
        schedule.committed(self._store.take_committed(self.name))
        skip = set(self._in_flight)
        out: list[list[OutboxEvent]] = []
        while len(out) < free:
            reads = schedule.choose(
                self._time(),
                max_streams=free - len(out),
                max_batch=max(1, self._sink.max_batch),
                exclude=skip,
            )
            if not reads:
                break
            held, misses = self._take_ahead(reads)
            task = self._ahead_task
            if task is not None and any(r.stream in self._ahead_reading for r in misses):
                # Their batches are being read: wait for that read rather than read them again
                # (behind it, on the same connection) and drop what it brings.
                await asyncio.wait([task])
                more, misses = self._take_ahead(misses)
                held += more
            if misses:
                held += await self._read_with_ahead(misses, skip)
            out += schedule.batches(reads, held)
            skip.update(r.stream for r in reads)
        return out

    async def _read_with_ahead(
        self, reads: list[StreamRead], busy: set[str]
    ) -> list[OutboxEvent]:
        """The events of ``reads`` from the store; in a backlog the same read also fetches the
        next batches ahead (the streams :meth:`DeliverySchedule.peek` serves next, as many
        as there is room for): one query for the slot that waits and for the next ones."""
        extra: list[StreamRead] = []
        room = self._read_ahead - len(self._ahead) - len(self._ahead_reading)
        if self._read_ahead and self._backlog and room > 0:
            extra = self._schedule.peek(
                self._time(),
                max_streams=room,
                max_batch=max(1, self._sink.max_batch),
                exclude=busy.union(self._ahead, self._ahead_reading, (r.stream for r in reads)),
            )
        events = await self._store.read_outbox(self.name, reads + extra)
        if not extra:
            return events
        wanted = {r.stream for r in reads}
        self._keep_ahead(extra, [e for e in events if e.device_id not in wanted])
        return [e for e in events if e.device_id in wanted]

    def _take_ahead(self, reads: list[StreamRead]) -> tuple[list[OutboxEvent], list[StreamRead]]:
        """The events of ``reads`` read ahead, and the reads that must go to the store."""
        held: list[OutboxEvent] = []
        misses: list[StreamRead] = []
        ahead = self._ahead
        for read in reads:
            got = ahead.pop(read.stream, None)
            # Still valid: read from where the cursor is now (module docstring), and full (a
            # short one may have more behind it by now: read it again, not send it short).
            if got is not None and got[0].after == read.after and len(got[1]) >= read.limit:
                held += got[1][: read.limit]
            else:
                misses.append(read)
        return held, misses

    def _read_ahead_soon(self, tg: asyncio.TaskGroup) -> None:
        """Start reading the next batches ahead once a quarter of the room is free (a read
        takes a few loop turns to come back: started at half, a 100,000-event backlog had its
        slots wait for it ~1 s in all)."""
        room = self._read_ahead - len(self._ahead)
        if self._ahead_task is not None or room < max(1, self._read_ahead // 4):
            return
        reads = self._schedule.peek(
            self._time(),
            max_streams=self._read_ahead - len(self._ahead),
            max_batch=max(1, self._sink.max_batch),
            exclude=self._in_flight.union(self._ahead),
        )
        if reads:
            self._ahead_reading = frozenset(r.stream for r in reads)
            self._ahead_task = tg.create_task(
                self._read_ahead_of(reads), name=f"drainer[{self.name}].read_ahead"
            )

    async def _read_ahead_of(self, reads: list[StreamRead]) -> None:
        try:
            events = await self._store.read_outbox(self.name, reads)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the batch is read again when it is chosen
            self._log.debug("reading ahead failed", error=str(exc))
            return
        finally:
            self._ahead_task = None
            self._ahead_reading = frozenset()
        self._keep_ahead(reads, events)
        if self._backlog:
            self._wake.set()  # the next read ahead may start now

    def _keep_ahead(self, reads: list[StreamRead], events: list[OutboxEvent]) -> None:
        by_stream: dict[str, list[OutboxEvent]] = {}
        for e in events:
            by_stream.setdefault(e.device_id, []).append(e)
        schedule = self._schedule
        for read in reads:
            # A stream served meanwhile (its cursor moved) has read its batch itself.
            if read.stream not in self._in_flight and schedule.cursor(read.stream) == read.after:
                self._ahead[read.stream] = (read, by_stream.get(read.stream, []))

    async def _deliver(self, batch: list[OutboxEvent]) -> None:
        device = batch[0].device_id
        progress: asyncio.Future[None] | None = None
        try:
            progress = await self._attempt(batch)
        finally:
            self._in_flight.discard(device)
            self._wake.set()
        if progress is not None:
            try:
                await progress
            except StoreError as exc:
                # The store keeps a failed group's progress (dead letters included) and writes
                # it with a later one; if the agent stops first, or the store itself failed,
                # the events are sent (or dead-lettered) again after the restart.
                self._log.warning(
                    "could not record delivery progress", device=device, error=str(exc)
                )

    async def _attempt(self, batch: list[OutboxEvent]) -> asyncio.Future[None] | None:
        """Send one device's batch and record the outcome; returns the progress future."""
        store, name = self._store, self.name
        head = batch[0]
        now = self._time()
        cutoff = now - self._ttl_s
        n_expired = 0
        while n_expired < len(batch) and batch[n_expired].created_at < cutoff:
            n_expired += 1
        if n_expired:
            expired = batch[:n_expired]
            self._stats.dead_lettered += n_expired
            DELIVERIES.labels(sink=name, result="dead_letter").inc(n_expired)
            self._log.warning(
                "events older than the TTL moved to the dead letter",
                device=head.device_id,
                events=n_expired,
                ttl_s=self._ttl_s,
            )
            self._schedule.done(head.device_id, [e.seq for e in expired])
            return store.dead_letter(name, expired, reason="ttl expired", attempts=head.attempts)
        # A later event past the TTL (a replayed one): send only what comes before it.
        for i, e in enumerate(batch):
            if e.created_at < cutoff:
                batch = batch[:i]
                break
        try:
            outcome: Outcome = await self._sink.send(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill the drainer
            self._log.exception(
                "sink raised instead of returning an outcome", device=head.device_id
            )
            outcome = Retry(f"sink error: {exc!r}")
        return self._record(batch, outcome)

    def _record(self, batch: list[OutboxEvent], outcome: Outcome) -> asyncio.Future[None] | None:
        store, name = self._store, self.name
        head = batch[0]
        device = head.device_id
        now = self._time()
        n = len(batch)
        if isinstance(outcome, Delivered):
            self._stats.delivered += n
            self._recovered()
            self._delivered_ok.inc(n)
            hist = self._latency
            for e in batch:
                observed = e.created_at if e.observed_at is None else e.observed_at
                hist.observe(max(0.0, now - observed))
            self._schedule.done(device, [e.seq for e in batch])
            self._outage.pop(device, None)
            if head.attempts:
                self._log.info("delivered after retries", device=device, attempts=head.attempts + 1)
                self._receiver_back(now)
            return store.mark_delivered(name, batch)
        if isinstance(outcome, Gone):
            self._stopped_reason = (
                f"{name}: the endpoint answered that it is gone ({outcome.reason}); "
                "delivery stopped, events stay in the outbox; fix the sink's URL in the "
                "configuration and restart the agent"
            )
            self._note_error(outcome.reason)
            DELIVERIES.labels(sink=name, result="gone").inc(n)
            self._log.error(
                "sink stopped: endpoint gone",
                device=device,
                reason=outcome.reason,
                hint="fix the URL in the configuration and restart the agent",
            )
            return None
        attempts = head.attempts + 1
        self._note_error(outcome.reason)
        if isinstance(outcome, Reject):
            if n == 1:
                self._stats.dead_lettered += 1
                DELIVERIES.labels(sink=name, result="dead_letter").inc()
                self._log.error(
                    "receiver rejected the event; moved to the dead letter",
                    device=device,
                    event_id=head.event_id,
                    type=head.type,
                    reason=outcome.reason,
                    attempts=attempts,
                    hint="inspect with `edge-agent outbox dead-letter list`",
                )
                self._schedule.done(device, [head.seq])
                return store.dead_letter(
                    name, batch, reason=f"rejected: {outcome.reason}", attempts=attempts
                )
            delay = self._backoff.delay(attempts, self._rng)
            result = "rejected"
            self._outage.pop(device, None)
        else:
            assert isinstance(outcome, Retry)
            delay = self._backoff.delay_honouring(attempts, outcome.retry_after, self._rng)
            result = "retry"
            self._outage[device] = now + (outcome.retry_after or 0.0)
            self._last_try = now
        self._stats.retried += n
        DELIVERIES.labels(sink=name, result=result).inc(n)
        # First failure and every tenth: a receiver outage with 1,000 devices must not
        # produce 1,000 lines per backoff round.
        level = "warning" if attempts == 1 or attempts % 10 == 0 else "debug"
        getattr(self._log, level)(
            "delivery failed; will retry",
            device=device,
            reason=outcome.reason,
            attempts=attempts,
            retry_in_s=round(delay, 3),
            events=n,
        )
        self._schedule.retry(
            device,
            head.seq,
            attempts=attempts,
            next_attempt_at=now + delay,
            error=outcome.reason,
            alone=isinstance(outcome, Reject),
        )
        return store.mark_retry(
            name, head, attempts=attempts, next_attempt_at=now + delay, error=outcome.reason
        )

    def _receiver_back(self, now: float) -> None:
        """A device got through after retries: the others backing off from a Retry are due."""
        outage, self._outage = self._outage, {}
        for device, not_before in outage.items():
            # Only the schedule's due time moves; the stored retry state keeps the later one,
            # so a restart is no earlier than before.
            self._schedule.due_by(device, max(now, not_before))
        if outage:
            self._wake.set()


__all__ = ["DEFAULT_BACKOFF", "Drainer"]
