"""Which outbox events a sink sends next: a pure schedule, owned by that sink's drainer.

The outbox is a set of ordered streams (today one per device; the key is opaque here and is
called ``stream``). Delivery is strictly in order within a stream, so a sink's whole progress
is one cursor per stream: the highest ``seq`` it is done with (delivered or dead-lettered).

The schedule holds, for one sink:

- ``cursor``: stream -> done seq (may run ahead of the store: progress is written behind);
- ``top``: stream -> highest seq committed, fed by :meth:`DeliverySchedule.committed`;
- the ready ring: streams that may have work, in round-robin order (served ones go last);
- ``retry``: streams whose head event is backing off, with attempts and the due time.

Head-of-line isolation: a stream whose head is backing off blocks only itself, and after a
rejected batch only its head is read (``limit`` 1), so a poison event is found alone. After a
``Retry`` (the receiver down or busy: the batch itself is not what failed) the whole batch is
tried again: a backlog after an outage of 300 rooms started with 300 single-event POSTs.

No I/O and no clock: the drainer asks :meth:`DeliverySchedule.choose` what to read, reads it
from the store, hands the rows to :meth:`DeliverySchedule.batches`, and reports outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from edge_agent import jsoncodec


class OutboxEvent:
    """One stored event, as handed to a sink. ``body`` is the serialized envelope, built once.

    ``device_id`` is the event's ordering stream. ``observed_at`` is when the fact happened
    (the envelope's ``data.observed_at``, else the commit time), stored in its own column so
    the latency metric needs no JSON.

    ``envelope`` is the parsed ``body``: given by whoever has it parsed already (the session
    that built it), else parsed from ``body`` on first use. A webhook sends ``body`` as it is
    and never needs it: a backlog read back from the store costs no JSON parse per event.
    Immutable, like the row it stands for (:meth:`with_attempts` makes a changed copy).
    """

    __slots__ = (
        "seq",
        "device_id",
        "event_id",
        "type",
        "_envelope",
        "body",
        "created_at",
        "attempts",
        "observed_at",
    )

    seq: int
    device_id: str
    event_id: str
    type: str
    _envelope: dict[str, Any] | None
    body: bytes
    created_at: float  # unix seconds when the event was committed
    attempts: int
    observed_at: float | None

    def __init__(
        self,
        seq: int,
        device_id: str,
        event_id: str,
        type: str,  # noqa: A002 - the envelope's field name
        envelope: dict[str, Any] | None,
        body: bytes,
        created_at: float,
        attempts: int = 0,
        observed_at: float | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "seq", seq)
        setattr_(self, "device_id", device_id)
        setattr_(self, "event_id", event_id)
        setattr_(self, "type", type)
        setattr_(self, "_envelope", envelope)
        setattr_(self, "body", body)
        setattr_(self, "created_at", created_at)
        setattr_(self, "attempts", attempts)
        setattr_(self, "observed_at", observed_at)

    @property
    def envelope(self) -> dict[str, Any]:
        """The envelope as a dict (parsed from ``body`` the first time it is asked for)."""
        env = self._envelope
        if env is None:
            env = jsoncodec.loads(self.body)
            object.__setattr__(self, "_envelope", env)
        return env

    def with_attempts(self, attempts: int) -> OutboxEvent:
        """This event with ``attempts`` (a retried head carries its attempts so far)."""
        return OutboxEvent(
            self.seq,
            self.device_id,
            self.event_id,
            self.type,
            self._envelope,
            self.body,
            self.created_at,
            attempts,
            self.observed_at,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"OutboxEvent is immutable (cannot set {name!r})")

    def _key(self) -> tuple[Any, ...]:
        return (
            self.seq,
            self.device_id,
            self.event_id,
            self.type,
            self.body,
            self.created_at,
            self.attempts,
            self.observed_at,
        )

    def __eq__(self, other: object) -> bool:
        # The envelope is the body parsed: equal bodies are equal envelopes.
        if not isinstance(other, OutboxEvent):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"OutboxEvent(seq={self.seq!r}, device_id={self.device_id!r}, "
            f"event_id={self.event_id!r}, type={self.type!r}, attempts={self.attempts!r})"
        )


class StreamRead(NamedTuple):
    """Read up to ``limit`` events of ``stream`` with ``seq > after``, in seq order."""

    stream: str
    after: int
    limit: int


@dataclass(slots=True)
class RetryState:
    """A stream's head event is backing off until ``next_attempt_at`` (unix seconds)."""

    seq: int
    attempts: int
    next_attempt_at: float
    error: str | None
    alone: bool = True
    """Read the head alone: after a rejected batch, or when the cause is not known (a retry
    state loaded from the store); False after a ``Retry`` outcome."""


@dataclass(slots=True)
class SinkProgress:
    """What the store holds of one sink's progress: the schedule's starting state."""

    cursors: dict[str, int]
    retries: dict[str, RetryState]
    tops: dict[str, int]  # stream -> highest seq stored for this sink


class DeliverySchedule:
    """One sink's delivery state; every method is synchronous and does no I/O."""

    def __init__(self, progress: SinkProgress | None = None) -> None:
        p = progress or SinkProgress({}, {}, {})
        self._cursor: dict[str, int] = dict(p.cursors)
        self._retry: dict[str, RetryState] = dict(p.retries)
        self._top: dict[str, int] = {}
        self._ready: dict[str, None] = {}  # insertion order is the round robin
        self.committed(p.tops)

    # -- input: the store has new events --------------------------------------------------------

    def committed(self, tops: Mapping[str, int]) -> None:
        """Events up to ``tops[stream]`` are stored (a commit, a replay)."""
        for stream, top in tops.items():
            if top > self._top.get(stream, 0):
                self._top[stream] = top
            if self._top.get(stream, 0) > self._cursor.get(stream, 0):
                self._ready[stream] = None

    # -- choosing work ----------------------------------------------------------------------------

    def choose(
        self, now: float, *, max_streams: int, max_batch: int, exclude: Iterable[str] = ()
    ) -> list[StreamRead]:
        """Up to ``max_streams`` reads, one per stream with work that is not backing off.

        ``exclude`` are the streams the caller has in flight. Chosen streams move to the back
        of the ring (round robin). A stream whose head is retried alone is read one event at a
        time.
        """
        reads = self._eligible(now, max_streams, max_batch, set(exclude), prune=True)
        for read in reads:
            del self._ready[read.stream]
            self._ready[read.stream] = None
        return reads

    def peek(
        self, now: float, *, max_streams: int, max_batch: int, exclude: Iterable[str] = ()
    ) -> list[StreamRead]:
        """The reads :meth:`choose` would give next (in its order), without taking them: what
        a drainer reads ahead while its slots are busy. Changes nothing."""
        return self._eligible(now, max_streams, max_batch, set(exclude), prune=False)

    def _eligible(
        self, now: float, max_streams: int, max_batch: int, skip: set[str], *, prune: bool
    ) -> list[StreamRead]:
        reads: list[StreamRead] = []
        idle: list[str] = []
        for stream in self._ready:
            if len(reads) >= max_streams:
                break
            if stream in skip:
                continue
            after = self._cursor.get(stream, 0)
            if after >= self._top.get(stream, 0):
                # Done up to its last stored event: idle until a commit brings more.
                idle.append(stream)
                continue
            r = self._retry.get(stream)
            if r is not None and r.next_attempt_at > now:
                continue
            reads.append(StreamRead(stream, after, 1 if r is not None and r.alone else max_batch))
        if prune:
            for stream in idle:
                del self._ready[stream]
        return reads

    def batches(
        self, reads: Sequence[StreamRead], events: Iterable[OutboxEvent]
    ) -> list[list[OutboxEvent]]:
        """Group what the store returned for ``reads`` into one batch per stream.

        The head of a retried stream carries its attempts so far. A stream the store had
        nothing for (its rows were moved by the outbox cap, say) goes idle, unless its progress
        moved while the read ran.
        """
        by_stream: dict[str, list[OutboxEvent]] = {}
        for e in events:
            r = self._retry.get(e.device_id)
            if r is not None and r.seq == e.seq:
                e = e.with_attempts(r.attempts)
            by_stream.setdefault(e.device_id, []).append(e)
        for read in reads:
            if read.stream not in by_stream and self._cursor.get(read.stream, 0) == read.after:
                self._ready.pop(read.stream, None)
                self._retry.pop(read.stream, None)
        return list(by_stream.values())

    def next_due(self, exclude: Iterable[str] = ()) -> float | None:
        """The earliest due time among backing-off streams with work, or ``None``."""
        skip = set(exclude)
        due = [
            r.next_attempt_at for s, r in self._retry.items() if s in self._ready and s not in skip
        ]
        return min(due) if due else None

    def soonest_retry(self, streams: Iterable[str]) -> str | None:
        """Of ``streams``, the backing-off one with work that is due soonest, or ``None``."""
        best: tuple[float, str] | None = None
        for s in streams:
            r = self._retry.get(s)
            if r is not None and s in self._ready and (best is None or r.next_attempt_at < best[0]):
                best = (r.next_attempt_at, s)
        return None if best is None else best[1]

    # -- input: outcomes ----------------------------------------------------------------------

    def done(self, stream: str, seqs: Sequence[int]) -> None:
        """``seqs`` of ``stream`` are delivered or dead-lettered: the cursor moves past them."""
        self._cursor[stream] = max(self._cursor.get(stream, 0), max(seqs))
        self._retry.pop(stream, None)

    def retry(
        self,
        stream: str,
        seq: int,
        *,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
        alone: bool = True,
    ) -> None:
        """``stream``'s head ``seq`` backs off until ``next_attempt_at``; ``alone``: read only
        the head when it is tried again (see :class:`RetryState`)."""
        self._retry[stream] = RetryState(seq, attempts, next_attempt_at, error, alone)

    def due_by(self, stream: str, when: float) -> None:
        """Bring ``stream``'s retry forward to ``when`` if it is due later (never later)."""
        r = self._retry.get(stream)
        if r is not None and r.next_attempt_at > when:
            r.next_attempt_at = when

    # -- views ------------------------------------------------------------------------------------

    def retrying(self) -> dict[str, dict[str, Any]]:
        """Streams backing off: ``{stream: {seq, attempts, next_attempt_at, error}}``."""
        return {
            s: {
                "seq": r.seq,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "error": r.error,
            }
            for s, r in self._retry.items()
        }

    def cursor(self, stream: str) -> int:
        return self._cursor.get(stream, 0)


__all__ = ["DeliverySchedule", "OutboxEvent", "RetryState", "SinkProgress", "StreamRead"]
