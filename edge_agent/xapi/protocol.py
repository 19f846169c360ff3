"""The xAPI JSON-RPC protocol, sans I/O: requests out as text, frames in as events.

Nothing here awaits or touches a socket. :class:`XapiProtocol` numbers requests, remembers
which ones are outstanding, keeps the feedback subscriptions, and turns each received frame
into :class:`Response`, :class:`ErrorResponse`, :class:`Notification` or :class:`Malformed`.
The asyncio shell (:mod:`edge_agent.xapi.client`) owns the futures, the socket and the clock.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge_agent import jsoncodec

from .errors import XapiError, error_for_code

if TYPE_CHECKING:
    from .budget import FeedbackBudget, LinkShare

PathLike = str | Sequence[str | int]
"""``"Configuration Time Zone"`` (space or ``/`` separated), or
``["Configuration", "Time", ...]``."""



class Feedback(dict[str, Any]):
    """A notification's params without ``Id`` (``{"Event": {"Bookings": {...}}}``), stamped
    with ``arrived_at``: the wall-clock time its frame was read off the link.

    A dict, so a handler that only reads the payload needs nothing else; one that decides by
    time (dedupe, deadlines, ``observed_at``) takes ``arrived_at`` rather than the time it gets
    round to the payload, which after a backlog (a stuck store, a stopped process) is later.

    ``arrived_after`` is ``None`` when the read time is the arrival. After the process or its
    loop stalled (SIGSTOP, a blocked loop), the frames the kernel buffered meanwhile are all
    read on resume: for those the arrival is only known to lie between ``arrived_after`` (the
    loop's last turn before the stall) and ``arrived_at``; the device may have sent them far
    apart (:class:`CatchUp`).

    The reader that delivers it counts it in its loop's :class:`~.budget.FeedbackBudget`
    (``budget``); freeing it gives that place back. A copy (``copy``, ``pickle``) is not counted.
    """

    __slots__ = ("arrived_after", "arrived_at", "budget", "share")

    def __init__(
        self, params: dict[str, Any], arrived_at: datetime, arrived_after: datetime | None = None
    ) -> None:
        self.budget: FeedbackBudget | None = None
        self.share: LinkShare | None = None  # the delivering link's part of the budget
        super().__init__(params)
        self.arrived_at = arrived_at
        self.arrived_after = arrived_after

    def __del__(self) -> None:
        budget = self.budget
        if budget is not None:
            self.budget = None
            budget.release(self.share)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self), self.arrived_at, self.arrived_after))

    @property
    def uncertain(self) -> bool:
        """Whether the frame was read in the catch-up after a stall (arrival not known)."""
        return self.arrived_after is not None

    def __repr__(self) -> str:
        return (
            f"Feedback({dict.__repr__(self)}, arrived_at={self.arrived_at!r}, "
            f"arrived_after={self.arrived_after!r})"
        )


STALL_AFTER_S = 1.0
"""A loop turn this much later than due means the process or its loop was stalled."""
CATCH_UP_QUIET_S = 0.25
"""After a stall, the catch-up burst on a link ends at the first frame read after the link was
quiet this long (its buffer had drained): frames read back to back are the buffered ones."""


class CatchUp:
    """Which frames one link read in the catch-up burst after a stall (sans-I/O: loop times in).

    The stall itself is seen by the loop's heartbeat (the shell's, one per loop): ``beat`` is
    the loop time of its last turn, ``stall`` the last stall it saw (``(start, end)``). A frame
    read while the heartbeat is overdue, or soon after a stall ended with no quiet gap on this
    link since, may have waited in the kernel's buffer from ``start`` on: :meth:`read` returns
    that ``start`` (the earliest the frame can have arrived), else ``None`` (the read time is
    the arrival). Wrongly ending a catch-up early costs a dedupe of frames the device sent far
    apart; staying in it costs only a dedupe of true repeats (at least once beats a loss), so
    every doubt keeps it going.
    """

    __slots__ = ("_from", "_last_read")

    def __init__(self) -> None:
        self._from: float | None = None
        self._last_read: float | None = None

    def read(
        self, now: float, beat: float, beat_interval: float, stall: tuple[float, float] | None
    ) -> float | None:
        start: float | None = None
        last = self._last_read
        if now - beat > beat_interval + STALL_AFTER_S:
            start = beat  # stalled and not yet noticed by the heartbeat: the resume's first turns
        elif stall is not None and (last is None or stall[1] > last):
            if now - stall[1] < CATCH_UP_QUIET_S:
                start = stall[0]  # the first read after a stall, right after it ended
        if start is None and self._from is not None:
            if last is not None and now - last < CATCH_UP_QUIET_S:
                start = self._from  # still back to back: still the buffered frames
        if start is not None and self._from is not None:
            start = min(start, self._from)
        self._from = start
        self._last_read = now
        return start


_Arrival = tuple[datetime, datetime | None]
"""A frame's ``(arrived_at, arrived_after)``."""

Handler = Callable[[Feedback], Any]
"""A feedback handler: called with the notification's :class:`Feedback`; may be async."""

FEEDBACK_METHOD = "xFeedback/Event"
SUBSCRIBE_METHOD = "xFeedback/Subscribe"
UNSUBSCRIBE_METHOD = "xFeedback/Unsubscribe"

# Notifications for a device Id we do not know yet are held while a subscribe is in flight:
# with NotifyCurrentValue the current value may be sent right around the subscribe answer.
HELD_NOTIFICATIONS_MAX = 64
PREVIEW_CHARS = 200

_SPLIT = re.compile(r"[\s/]+")


def split_path(path: PathLike) -> list[str | int]:
    """``"Status SystemUnit Uptime"`` -> ``["Status", "SystemUnit", "Uptime"]``.

    Lists pass through (copied). All-digit string components become ints (array indexes).
    """
    if isinstance(path, str):
        parts: Iterable[str | int] = (p for p in _SPLIT.split(path.strip()) if p)
    else:
        parts = path
    out: list[str | int] = []
    for p in parts:
        if isinstance(p, str) and p.isdigit():
            out.append(int(p))
        else:
            out.append(p)
    if not out:
        raise ValueError(f"empty xAPI path: {path!r}")
    return out


def command_method(path: PathLike) -> str:
    """``"Bookings List"`` -> ``"xCommand/Bookings/List"`` (a leading ``xCommand`` is dropped)."""
    parts = [str(p) for p in split_path(path)]
    if parts[0] in ("xCommand", "Command"):
        parts = parts[1:]
    if not parts:
        raise ValueError(f"no command in {path!r}")
    return "xCommand/" + "/".join(parts)


# --- events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    """A successful answer to request ``request_id``."""

    request_id: int
    method: str
    result: Any


@dataclass(slots=True)
class ErrorResponse:
    """A JSON-RPC error answer to request ``request_id``."""

    request_id: int
    method: str
    code: int
    message: str
    data: Any = None

    def exception(self, device: str | None = None) -> XapiError:
        """The typed exception (:func:`~edge_agent.xapi.errors.error_for_code`)."""
        where = f"{device}: " if device else ""
        text = f"{where}{self.method} failed: {self.message} (code {self.code})"
        if isinstance(self.data, dict) and self.data.get("Cause"):
            text += f"; cause: {self.data['Cause']}"
        return error_for_code(self.code, text, device=device, data=self.data)


@dataclass(slots=True)
class Notification:
    """A feedback notification; ``payload`` is the params without ``Id``, stamped with the
    arrival of the frame that carried it (also when it was held for a subscribe answer)."""

    subscription: Subscription
    payload: Feedback


@dataclass(slots=True)
class Malformed:
    """A frame that could not be used; log it and go on (it never ends the link)."""

    reason: str
    preview: str


Event = Response | ErrorResponse | Notification | Malformed


# --- subscriptions --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Subscription:
    """One feedback subscription, kept across reconnects.

    ``key`` is stable for the life of the client (what ``subscribe()`` returns); ``device_id``
    is the Id the device gave on the current connection, ``None`` until (re)subscribed.
    """

    key: int
    query: list[str | int]
    handler: Handler
    notify_current_value: bool
    device_id: int | None = None


class SubscriptionRegistry:
    """The subscriptions by stable key and by the current device-side Id."""

    __slots__ = ("_by_key", "_by_device_id", "_next_key")

    def __init__(self) -> None:
        self._by_key: dict[int, Subscription] = {}
        self._by_device_id: dict[int, Subscription] = {}
        self._next_key = 1

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Any:
        return iter(list(self._by_key.values()))

    def add(self, query: PathLike, handler: Handler, notify_current_value: bool) -> Subscription:
        """Register (or return the identical existing) subscription."""
        q = split_path(query)
        for sub in self._by_key.values():
            if (
                sub.query == q
                and sub.handler == handler
                and sub.notify_current_value == notify_current_value
            ):
                return sub
        sub = Subscription(self._next_key, q, handler, notify_current_value)
        self._next_key += 1
        self._by_key[sub.key] = sub
        return sub

    def get(self, key: int) -> Subscription | None:
        return self._by_key.get(key)

    def by_device_id(self, device_id: int) -> Subscription | None:
        return self._by_device_id.get(device_id)

    def bind(self, sub: Subscription, device_id: int) -> None:
        """Record the device's Id for ``sub`` on the current connection (re-keys it)."""
        if sub.device_id is not None:
            self._by_device_id.pop(sub.device_id, None)
        sub.device_id = device_id
        if sub.key in self._by_key:
            self._by_device_id[device_id] = sub

    def remove(self, key: int) -> Subscription | None:
        sub = self._by_key.pop(key, None)
        if sub is not None and sub.device_id is not None:
            self._by_device_id.pop(sub.device_id, None)
        return sub

    def unbind_all(self) -> None:
        """The connection is gone: device Ids mean nothing on the next one."""
        for sub in self._by_key.values():
            sub.device_id = None
        self._by_device_id.clear()


# --- the protocol ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Outstanding:
    method: str
    subscription: Subscription | None = None


@dataclass(slots=True)
class Request:
    """An encoded request: send ``text`` as one text frame; the answer carries ``request_id``."""

    request_id: int
    method: str
    text: str


@dataclass(slots=True)
class XapiProtocol:
    """State of one device link's JSON-RPC conversation (survives reconnects).

    ``device`` only labels the errors it builds.
    """

    device: str | None = None
    subscriptions: SubscriptionRegistry = field(default_factory=SubscriptionRegistry)
    _outstanding: dict[int, _Outstanding] = field(default_factory=dict)
    _next_id: int = 1
    # Made on first use: most links never need it. Each keeps its frame's arrival time.
    _held: deque[tuple[dict[str, Any], _Arrival]] | None = None
    _subscribes_in_flight: int = 0

    # --- requests out ---

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        subscription: Subscription | None = None,
    ) -> Request:
        """Encode ``method(params)`` with a fresh id and remember it as outstanding."""
        request_id = self._next_id
        self._next_id += 1
        doc: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            doc["params"] = params
        text = jsoncodec.dumps(doc)
        self._outstanding[request_id] = _Outstanding(method, subscription)
        if subscription is not None:
            self._subscribes_in_flight += 1
        return Request(request_id, method, text)

    def get(self, path: PathLike) -> Request:
        return self.request("xGet", {"Path": split_path(path)})

    def query(self, query: PathLike) -> Request:
        return self.request("xQuery", {"Query": split_path(query)})

    def set(self, path: PathLike, value: Any) -> Request:
        return self.request("xSet", {"Path": split_path(path), "Value": value})

    def command(self, path: PathLike, args: dict[str, Any]) -> Request:
        return self.request(command_method(path), args)

    def subscribe(self, sub: Subscription) -> Request:
        """The ``xFeedback/Subscribe`` for ``sub``; its answer binds the device's Id."""
        return self.request(
            SUBSCRIBE_METHOD,
            {"Query": sub.query, "NotifyCurrentValue": sub.notify_current_value},
            subscription=sub,
        )

    def unsubscribe(self, key: int) -> Request | None:
        """Forget subscription ``key``; the request to send if it is live on this connection."""
        sub = self.subscriptions.remove(key)
        if sub is None or sub.device_id is None:
            return None
        return self.request(UNSUBSCRIBE_METHOD, {"Id": sub.device_id})

    def forget(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` (timed out or cancelled); a late answer is Malformed."""
        out = self._outstanding.pop(request_id, None)
        if out is not None and out.subscription is not None:
            self._subscribes_in_flight -= 1

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def connection_lost(self) -> list[int]:
        """Reset per-connection state; returns the ids that will never be answered."""
        ids = list(self._outstanding)
        self._outstanding.clear()
        self._subscribes_in_flight = 0
        self._held = None
        self.subscriptions.unbind_all()
        return ids

    # --- frames in ---

    def receive(
        self, frame: str | bytes, arrived_at: datetime, arrived_after: datetime | None = None
    ) -> list[Event]:
        """Decode one WebSocket message into events (usually one; never raises).

        ``arrived_at`` is when the shell read the frame, ``arrived_after`` the earliest it can
        have arrived when that is uncertain (a catch-up after a stall): notifications carry
        both (:class:`Feedback`)."""
        if not isinstance(frame, str):
            return [Malformed("binary frame", _preview(frame))]
        try:
            doc = jsoncodec.loads(frame)
        except jsoncodec.JSONDecodeError:
            return [Malformed("invalid JSON", _preview(frame))]
        if not isinstance(doc, dict):
            return [Malformed("not a JSON-RPC object", _preview(frame))]
        method = doc.get("method")
        if method is not None:
            if method == FEEDBACK_METHOD:
                return self._notification(doc, frame, (arrived_at, arrived_after))
            return [Malformed(f"unexpected method {method!r}", _preview(frame))]
        if "id" in doc and ("result" in doc or "error" in doc):
            return self._answer(doc, frame)
        return [Malformed("neither a response nor a notification", _preview(frame))]

    def _answer(self, doc: dict[str, Any], frame: str) -> list[Event]:
        request_id = doc["id"]
        out = self._outstanding.pop(request_id, None) if isinstance(request_id, int) else None
        if out is None:
            return [Malformed(f"response to unknown request id {request_id!r}", _preview(frame))]
        sub = out.subscription
        if sub is not None:
            self._subscribes_in_flight -= 1
        error = doc.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                error = {"code": -32603, "message": f"malformed error object: {error!r}"}
            return [
                ErrorResponse(
                    request_id,
                    out.method,
                    error["code"],
                    str(error.get("message", "")),
                    error.get("data"),
                )
            ]
        result = doc["result"]
        events: list[Event] = [Response(request_id, out.method, result)]
        if sub is not None:
            device_id = result.get("Id") if isinstance(result, dict) else None
            if not isinstance(device_id, int):
                return [
                    ErrorResponse(
                        request_id, out.method, -32603, f"subscribe answer without Id: {result!r}"
                    )
                ]
            self.subscriptions.bind(sub, device_id)
            events.extend(self._release_held(device_id))
        if not self._subscribes_in_flight and self._held is not None:
            events.extend(
                Malformed(f"feedback for unknown subscription {p.get('Id')}", _preview(repr(p)))
                for p, _ in self._held
            )
            self._held = None
        return events

    def _notification(self, doc: dict[str, Any], frame: str, arrival: _Arrival) -> list[Event]:
        params = doc.get("params")
        device_id = params.get("Id") if isinstance(params, dict) else None
        if not isinstance(params, dict) or not isinstance(device_id, int):
            return [Malformed("feedback without an integer Id", _preview(frame))]
        sub = self.subscriptions.by_device_id(device_id)
        if sub is None:
            if self._subscribes_in_flight:
                if self._held is None:
                    self._held = deque(maxlen=HELD_NOTIFICATIONS_MAX)
                self._held.append((params, arrival))
                return []
            return [Malformed(f"feedback for unknown subscription {device_id}", _preview(frame))]
        del params["Id"]
        return [Notification(sub, Feedback(params, *arrival))]

    def _release_held(self, device_id: int) -> list[Event]:
        if not self._held:
            return []
        sub = self.subscriptions.by_device_id(device_id)
        keep: deque[tuple[dict[str, Any], _Arrival]] = deque(maxlen=HELD_NOTIFICATIONS_MAX)
        out: list[Event] = []
        for params, arrival in self._held:
            if params.get("Id") == device_id and sub is not None:
                del params["Id"]
                out.append(Notification(sub, Feedback(params, *arrival)))
            else:
                keep.append((params, arrival))
        self._held = keep
        return out


def _preview(frame: str | bytes) -> str:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame[:PREVIEW_CHARS]).hex()
    return frame[:PREVIEW_CHARS]
