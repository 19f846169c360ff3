"""Typed bookings, and the parser for a ``Bookings List`` result.

Device payloads are parsed with lenient pydantic models at this edge; everything past the edge is
a frozen dataclass. A malformed list entry is skipped and the reason returned, never raised: one
odd booking from a calendar backend must not blind the agent to the rest of the room's day.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from edge_agent.clock import parse_utc, utc_iso

__all__ = [
    "MAX_LIST_PAGES",
    "MAX_LIST_ROWS",
    "Booking",
    "ListPage",
    "Organizer",
    "booking_key",
    "device_bool",
    "device_label",
    "device_str",
    "join_pages",
    "next_page_offset",
    "page_cap_reached",
    "parse_device_time",
    "parse_list_result",
    "plus_minutes",
    "repeats",
]


# --------------------------------------------------------------------------- value helpers


def device_str(value: Any) -> str | None:
    """A device string, with the device's "empty means absent" folded into ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def device_bool(value: Any) -> bool | None:
    """ "True"/"False" (how the device writes booleans) -> bool; anything else -> None."""
    if isinstance(value, bool):
        return value
    s = device_str(value)
    if s is None:
        return None
    low = s.lower()
    if low in ("true", "on", "yes", "1"):
        return True
    if low in ("false", "off", "no", "0"):
        return False
    return None


def parse_device_time(value: Any) -> datetime | None:
    """A device timestamp (UTC ``...Z``) -> aware UTC datetime; empty or unparsable -> None."""
    s = device_str(value)
    if s is None:
        return None
    return _parse_time(s)


@lru_cache(maxsize=1024)
def _parse_time(s: str) -> datetime | None:
    # Memoised: bookings start and end on a few shared times (:00, :30) in every room, and
    # each event repeats its booking's; one datetime per distinct time instead of two per
    # booking in every window (~1.4 MiB at 1,000 rooms of 13 bookings) and no re-parse.
    try:
        return parse_utc(s)
    except (ValueError, OverflowError):
        # OverflowError: year 1 east of UTC or year 9999 west of it has no UTC instant.
        return None


def device_label(value: Any) -> str | None:
    """:func:`device_str` for a field with a handful of values fleet-wide (``Privacy``,
    ``MeetingPlatform``): interned, so every room's bookings share one string per value (the
    interpreter drops an interned string nobody uses any more)."""
    s = device_str(value)
    return None if s is None else sys.intern(s)


DEVICE_INT_MAX = 10**12
"""Largest magnitude :func:`device_int` accepts: beyond any count, offset or duration a device
means (10^12 minutes is ~1.9 million years) and far inside what ``timedelta`` can hold."""


def device_int(value: Any) -> int | None:
    """A device number (``"30"``, ``"30.0"``) -> int; empty, unparsable, not finite or beyond
    :data:`DEVICE_INT_MAX` -> None."""
    s = device_str(value)
    if s is None:
        return None
    try:
        n = float(s)
    except ValueError:
        return None
    if not math.isfinite(n) or abs(n) > DEVICE_INT_MAX:
        return None
    return int(n)


def plus_minutes(start: datetime, minutes: int) -> datetime | None:
    """``start + minutes``, or None where that leaves the calendar (a start in year 9999)."""
    try:
        return start + timedelta(minutes=minutes)
    except OverflowError:
        return None


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class Organizer:
    """The meeting organizer; every field is ``None`` when the device left it empty."""

    name: str | None = None
    email: str | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "email": self.email, "id": self.id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Organizer:
        if not d:
            return cls()
        return cls(
            name=device_str(d.get("name")),
            email=device_str(d.get("email")),
            id=device_str(d.get("id")),
        )

    def is_empty(self) -> bool:
        return self.name is None and self.email is None and self.id is None


@dataclass(frozen=True, slots=True)
class Booking:
    """One booking of the room, as the agent keeps it.

    ``id`` is the device's ``Id`` (can change after a reboot on hybrid calendars);
    ``meeting_id`` the calendar backend's ``MeetingId`` (``None`` when the device sends it empty);
    ``booking_request_uuid`` is known only for bookings made through ``Bookings Book`` whose
    outcome the agent saw. ``start``/``end`` are aware UTC datetimes.
    """

    id: str
    start: datetime
    end: datetime
    title: str | None = None
    meeting_id: str | None = None
    booking_request_uuid: str | None = None
    organizer: Organizer = field(default_factory=Organizer)
    privacy: str | None = None
    platform: str | None = None
    join_url: str | None = None
    # Not in the envelope contract; kept in the store row for the local API and matching.
    agenda: str | None = None
    start_buffer_s: int | None = None
    end_buffer_s: int | None = None
    checked_in: bool | None = None

    @property
    def duration_min(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)

    def to_dict(self) -> dict[str, Any]:
        """The booking as the event envelope carries it (DESIGN.md "Contracts"), exactly."""
        return {
            "id": self.id,
            "meeting_id": self.meeting_id,
            "booking_request_uuid": self.booking_request_uuid,
            "title": self.title,
            "start": utc_iso(self.start),
            "end": utc_iso(self.end),
            "organizer": self.organizer.to_dict(),
            "privacy": self.privacy,
            "platform": self.platform,
            "join_url": self.join_url,
        }

    def to_row(self) -> dict[str, Any]:
        """The JSON-able dict the store keeps in the window table (envelope fields + extras)."""
        row = self.to_dict()
        row["agenda"] = self.agenda
        row["start_buffer_s"] = self.start_buffer_s
        row["end_buffer_s"] = self.end_buffer_s
        row["checked_in"] = self.checked_in
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Booking:
        """Inverse of :meth:`to_row` (also accepts a plain :meth:`to_dict`). Raises ValueError."""
        start = parse_device_time(row.get("start"))
        end = parse_device_time(row.get("end"))
        bid = device_str(row.get("id"))
        if bid is None or start is None or end is None:
            raise ValueError(f"window row lacks id/start/end: {dict(row)!r}")
        org = row.get("organizer")
        return cls(
            id=bid,
            start=start,
            end=end,
            title=device_str(row.get("title")),
            meeting_id=device_str(row.get("meeting_id")),
            booking_request_uuid=device_str(row.get("booking_request_uuid")),
            organizer=Organizer.from_dict(org if isinstance(org, Mapping) else None),
            privacy=device_label(row.get("privacy")),
            platform=device_label(row.get("platform")),
            join_url=device_str(row.get("join_url")),
            agenda=device_str(row.get("agenda")),
            start_buffer_s=device_int(row.get("start_buffer_s")),
            end_buffer_s=device_int(row.get("end_buffer_s")),
            checked_in=device_bool(row.get("checked_in")),
        )


def booking_key(b: Booking) -> str:
    """``MeetingId`` when the device gave one, else ``"id:" + Id``.

    The MeetingId is the calendar backend's and survives device reboots; the device ``Id`` does not
    on hybrid calendars, and local-calendar bookings may have no MeetingId at all.
    """
    return b.meeting_id if b.meeting_id else "id:" + b.id


@dataclass(frozen=True, slots=True)
class ListPage:
    """One parsed ``Bookings List`` result (or several pages joined by :func:`join_pages`).

    ``received`` counts the entries in the payload (skipped ones included), which is what
    ``Offset`` advances by; ``total_rows`` is ``ResultInfo.TotalRows`` (None when absent).
    ``skipped`` holds one human-readable reason per entry that could not be parsed, and
    ``skipped_ids`` the device ``Id`` of each, in the same order (None where it was unreadable).

    A skipped entry is a booking the device has but the agent cannot see: reconciliation keeps
    the stored copy of each ``skipped_ids`` booking, and deletes nothing at all while
    :attr:`skipped_unidentified` (it cannot tell which stored booking the entry was).
    """

    bookings: tuple[Booking, ...]
    total_rows: int | None = None
    received: int = 0
    last_updated: datetime | None = None
    skipped: tuple[str, ...] = ()
    skipped_ids: tuple[str | None, ...] = ()
    cut_short: str | None = None
    """Why paging stopped before ``TotalRows`` said the list ends (:func:`page_cap_reached`,
    :func:`repeats`); None for a whole list. A list cut short is incomplete: no deletions."""

    @property
    def complete(self) -> bool:
        """Every booking the device listed is here or named in ``skipped_ids``: only then may
        a booking missing from the list read as deleted."""
        return self.cut_short is None and not self.skipped_unidentified

    @property
    def skipped_unidentified(self) -> bool:
        """Some entry (or the whole payload) was skipped without a readable ``Id``.

        Also true for a page built with reasons but without their ids (``skipped`` longer than
        ``skipped_ids``): not knowing which booking was skipped must read as "any of them".
        """
        return len(self.skipped_ids) < len(self.skipped) or None in self.skipped_ids


def join_pages(pages: Iterable[ListPage], *, cut_short: str | None = None) -> ListPage:
    """The pages of one ``Bookings List`` (fetched in ``Offset`` order) as one ListPage.

    ``total_rows`` and ``last_updated`` are the last page's; the rest is concatenated.
    ``cut_short``: why paging stopped early (see :attr:`ListPage.cut_short`).
    """
    bookings: list[Booking] = []
    skipped: list[str] = []
    skipped_ids: list[str | None] = []
    received = 0
    last = ListPage(bookings=())
    for page in pages:
        bookings.extend(page.bookings)
        skipped.extend(page.skipped)
        # Pad a page whose reasons lack ids so the ids stay aligned with their reasons.
        ids = page.skipped_ids + (None,) * (len(page.skipped) - len(page.skipped_ids))
        skipped_ids.extend(ids[: len(page.skipped)])
        received += page.received
        last = page
    return ListPage(
        bookings=tuple(bookings),
        total_rows=last.total_rows,
        received=received,
        last_updated=last.last_updated,
        skipped=tuple(skipped),
        skipped_ids=tuple(skipped_ids),
        cut_short=cut_short,
    )


MAX_LIST_PAGES = 20
"""Most ``Bookings List`` pages one list reads. Two days of one room's bookings fit in a page or
two; a device claiming ``TotalRows`` 10^9 (seen: one ignoring ``Offset``) made the agent page
12,524 times in 60 s and hold a list slot for good."""
MAX_LIST_ROWS = 2_000
"""Most entries one list keeps (pages may be shorter than ``Limit``)."""


def repeats(page: ListPage, previous: ListPage) -> bool:
    """``page`` has the same content as the page before it: the device ignored ``Offset``.
    Real pages never do (every entry has its own ``Id``)."""
    return (
        page.received > 0
        and page.received == previous.received
        and page.bookings == previous.bookings
        and page.skipped == previous.skipped
    )


def page_cap_reached(
    pages: Iterable[ListPage], *, max_pages: int = MAX_LIST_PAGES, max_rows: int = MAX_LIST_ROWS
) -> str | None:
    """Why no further page may be read after ``pages`` (None: reading on is fine)."""
    count = rows = 0
    for page in pages:
        count += 1
        rows += page.received
    if count >= max_pages:
        return f"page cap reached ({max_pages} pages, {rows} entries read)"
    if rows >= max_rows:
        return f"row cap reached ({rows} entries read, cap {max_rows})"
    return None


def next_page_offset(page: ListPage, offset: int) -> int | None:
    """The ``Offset`` of the next page; None when ``page`` (fetched at ``offset``) was the last."""
    if page.total_rows is None or page.received == 0:
        return None
    nxt = offset + page.received
    return nxt if nxt < page.total_rows else None


# --------------------------------------------------------------------------- the edge (pydantic)


def _node(v: Any) -> Any:
    # Devices send "" for an empty node ("Organizer": "", "Webex": ""), not {} or nothing.
    return v if isinstance(v, Mapping) else None


def _as_list(v: Any) -> list[Any]:
    # XML-derived JSON turns a one-element array into a bare object; accept both. An empty node
    # ("") is an empty list.
    if isinstance(v, Mapping):
        return [v]
    if isinstance(v, list):
        return v
    return []


def _objects(v: Any) -> list[Any]:
    return [x for x in _as_list(v) if isinstance(x, Mapping)]


# Every field is optional and lenient: what a booking cannot do without (Id, StartTime, EndTime)
# is checked in _booking_from_raw, so a malformed detail costs only that detail, never the
# booking. A value that arrives as an object or array carries nothing usable: absent, like "".
_Text = Annotated[str | None, BeforeValidator(device_str)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _RawOrganizer(_Lenient):
    FirstName: _Text = None
    LastName: _Text = None
    Email: _Text = None
    Id: _Text = None
    Name: _Text = None


class _RawTime(_Lenient):
    StartTime: _Text = None
    EndTime: _Text = None
    StartTimeBuffer: _Text = None
    EndTimeBuffer: _Text = None


class _RawWebex(_Lenient):
    Enabled: _Text = None
    Url: _Text = None
    MeetingNumber: _Text = None


class _RawCall(_Lenient):
    Number: _Text = None
    Protocol: _Text = None
    CallType: _Text = None


class _RawCalls(_Lenient):
    Call: Annotated[list[_RawCall], BeforeValidator(_objects)] = []


class _RawDialInfo(_Lenient):
    Calls: Annotated[_RawCalls | None, BeforeValidator(_node)] = None
    ConnectMode: _Text = None


class _RawListBooking(_Lenient):
    Id: _Text = None
    MeetingId: _Text = None
    BookingRequestUUID: _Text = None
    Title: _Text = None
    Agenda: _Text = None
    Privacy: _Text = None
    MeetingPlatform: _Text = None
    MeetingUrl: _Text = None
    CheckedIn: _Text = None
    Organizer: Annotated[_RawOrganizer | None, BeforeValidator(_node)] = None
    Time: Annotated[_RawTime | None, BeforeValidator(_node)] = None
    Webex: Annotated[_RawWebex | None, BeforeValidator(_node)] = None
    DialInfo: Annotated[_RawDialInfo | None, BeforeValidator(_node)] = None


def _organizer(raw: _RawOrganizer | None) -> Organizer:
    if raw is None:
        return Organizer()
    parts = [p for p in (device_str(raw.FirstName), device_str(raw.LastName)) if p]
    name = " ".join(parts) if parts else device_str(raw.Name)
    return Organizer(name=name, email=device_str(raw.Email), id=device_str(raw.Id))


def _booking_from_raw(raw: _RawListBooking) -> Booking:
    bid = device_str(raw.Id)
    if bid is None:
        raise ValueError("empty Id")
    time = raw.Time or _RawTime()
    start = parse_device_time(time.StartTime)
    end = parse_device_time(time.EndTime)
    if start is None or end is None:
        raise ValueError(f"unparsable Time {time.StartTime!r}..{time.EndTime!r}")
    if end < start:
        raise ValueError(f"EndTime {time.EndTime} before StartTime {time.StartTime}")
    webex_on = device_bool(raw.Webex.Enabled) if raw.Webex else None
    platform = device_label(raw.MeetingPlatform)
    if platform == "None":  # the device's literal for "no meeting platform"
        platform = None
    if platform is None and webex_on:
        platform = "Webex"
    join_url = device_str(raw.MeetingUrl) or (device_str(raw.Webex.Url) if raw.Webex else None)
    if join_url is None and raw.DialInfo and raw.DialInfo.Calls:
        # The first dial string is what the room's Join button calls (a SIP URI, usually).
        join_url = next((n for c in raw.DialInfo.Calls.Call if (n := device_str(c.Number))), None)
    return Booking(
        id=bid,
        start=start,
        end=end,
        title=device_str(raw.Title),
        meeting_id=device_str(raw.MeetingId),
        booking_request_uuid=device_str(raw.BookingRequestUUID),
        organizer=_organizer(raw.Organizer),
        privacy=device_label(raw.Privacy),
        platform=platform,
        join_url=join_url,
        agenda=device_str(raw.Agenda),
        start_buffer_s=device_int(time.StartTimeBuffer),
        end_buffer_s=device_int(time.EndTimeBuffer),
        checked_in=device_bool(raw.CheckedIn),
    )


def parse_list_result(result: Mapping[str, Any] | Any) -> ListPage:
    """Parse the JSON-RPC ``result`` of ``Bookings List`` (never raises).

    Accepts the bare result or one wrapped as ``{"BookingsListResult": {...}}``. The device
    leaves ``Booking`` out entirely when there are no bookings; lower-case ``id`` (the position in
    the list) is ignored; booleans arrive as "True"/"False"; empty strings mean absent, for
    nodes (``"Organizer": ""``) as for values. Only an entry without a usable ``Id``,
    ``StartTime`` or ``EndTime`` is skipped.
    """
    if not isinstance(result, Mapping):
        return ListPage(
            bookings=(),
            skipped=(f"list result is not an object: {type(result).__name__}",),
            skipped_ids=(None,),
        )
    inner = result.get("BookingsListResult")
    if isinstance(inner, Mapping):
        result = inner
    raw_entries = result.get("Booking")
    skipped: list[str] = []
    skipped_ids: list[str | None] = []
    entries: list[Any] = []
    if isinstance(raw_entries, (list, Mapping)):
        entries = _as_list(raw_entries)
    elif raw_entries is not None and raw_entries != "":  # absent or an empty node: no bookings
        skipped.append(f"Booking is not a list: {type(raw_entries).__name__}")
        skipped_ids.append(None)
    bookings: list[Booking] = []
    for pos, entry in enumerate(entries):
        bid = device_str(entry.get("Id")) if isinstance(entry, Mapping) else None
        label = f"Id={bid}" if bid else f"#{pos}"
        try:
            raw = _RawListBooking.model_validate(entry)
            bookings.append(_booking_from_raw(raw))
            continue
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<entry>'}: {e['msg']}"
                for e in exc.errors()
            )
            skipped.append(f"booking {label} skipped: {errs}")
        except ValueError as exc:
            skipped.append(f"booking {label} skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - "never raises": one entry, never the list
            skipped.append(f"booking {label} skipped: {type(exc).__name__}: {exc}")
        skipped_ids.append(bid)
    total: int | None = None
    info = result.get("ResultInfo")
    if isinstance(info, Mapping):
        total = device_int(info.get("TotalRows"))
    return ListPage(
        bookings=tuple(bookings),
        total_rows=total,
        received=len(entries),
        last_updated=parse_device_time(result.get("LastUpdated")),
        skipped=tuple(skipped),
        skipped_ids=tuple(skipped_ids),
    )
