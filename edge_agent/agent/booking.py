"""Booking a calendar-only room through the agent (DESIGN.md "Booking through the agent").

A device room is booked by its session (``Bookings Book`` on the device); a calendar-only
Microsoft or Google room has no session, so the agent books it in the room's calendar, here.
Apart from the agent's lifecycle because it is a protocol of its own (check, record, create,
close) that reads the running calendar sources (:class:`CalendarSources`) and the store, and
nothing else of the agent.

The request is recorded (``booking_request``) with a pending row under the room id, then
the event is created in the room's mailbox with ``transactionId`` = the request UUID, so
a create sent again (a timeout) never makes a second event. The answer closes the request
in one commit: ``booking.created`` (with ``booking_request_uuid`` and ``pending_ms``), the
pending row deleted, and the booking kept in the room id's window rows, which is what the
calendar rounds read as "already reported" (:mod:`edge_agent.bookings.precedence`, by
meeting id): the round that sees the event does not report it again, and a round that
sees it before the answer is in skips it as awaited by the pending request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from edge_agent.agent.build import google_rooms, graph_rooms
from edge_agent.agent.calendars import CalendarSources
from edge_agent.bookings.book import BookingOrder
from edge_agent.bookings.models import Booking
from edge_agent.calendars.refusals import BookingNotSupported, CalendarUnavailable
from edge_agent.clock import Clock
from edge_agent.session import BookingSent
from edge_agent.store import Store, StoreBackend

if TYPE_CHECKING:
    from edge_agent.bookings.pending import PendingRequest
    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.booking import GoogleBooking
    from edge_agent.calendars.graph.booking import GraphBooking
    from edge_agent.calendars.poller import CalendarRoom
    from edge_agent.calendars.sync import SyncState

log = structlog.get_logger("edge_agent.agent")

CALENDAR_BOOK_TIMEOUT_S = 60.0
"""A calendar room's booking request expires when its event is not created within this."""


class CalendarBookings:
    """Book and release the calendar-only rooms of one agent.

    Args:
        calendars: the agent's calendar sources (their pollers, clients and configuration).
        clock: the agent's clock.
        store: the agent's store (``None`` until it is open).
        task_group: the agent's TaskGroup (``None`` outside a run): a request's event is
            created in a task of its own there.
        tasks: the agent's list of tasks cancelled at shutdown; a request's task is in it
            while it runs (cancelled, the request then expires).
    """

    def __init__(
        self,
        calendars: CalendarSources,
        *,
        clock: Clock,
        store: Callable[[], StoreBackend | None],
        task_group: Callable[[], asyncio.TaskGroup | None],
        tasks: list[asyncio.Task[Any]],
    ) -> None:
        self._calendars = calendars
        self._config = calendars.config
        self._clock = clock
        self._store_of = store
        self._task_group = task_group
        self._tasks = tasks
        self._locks: dict[str, asyncio.Lock] = {}
        self._google_booking_tokens: ServiceAccountTokens | None = None

    @property
    def _store(self) -> StoreBackend | None:
        return self._store_of()

    @property
    def _tg(self) -> asyncio.TaskGroup | None:
        return self._task_group()

    def room(self, room_id: str) -> tuple[str, CalendarRoom] | str | None:
        """The calendar-only room ``room_id`` with its source (``"microsoft"``, ``"google"``),
        its source's name when that source cannot be booked through the agent, or ``None``."""
        for source, poller in (
            ("microsoft", self._calendars.graph),
            ("google", self._calendars.google),
        ):
            st = poller.status().get(room_id) if poller is not None else None
            if st is not None and st.room.device_id is None:
                return source, st.room
        if self._config.microsoft is not None:
            for room in graph_rooms(self._config):
                if room.room_id == room_id and room.device_id is None:
                    return "microsoft", room
        if self._config.google is not None:
            for room in google_rooms(self._config):
                if room.room_id == room_id and room.device_id is None:
                    return "google", room
        for r in self._config.rooms:
            if r.id == room_id:
                return str(r.source)
        return None

    async def book(self, room_id: str, order: BookingOrder, request_uuid: str) -> BookingSent:
        """Book the calendar-only room ``room_id`` (:meth:`_book_calendar`).

        Raises:
            LookupError: unknown room.
            BookingNotSupported: a calendar room of a source the agent cannot book.
            else what :meth:`_book_calendar` raises.
        """
        room = self.room(room_id)
        if room is None:
            raise LookupError(f"unknown room {room_id!r}")
        if isinstance(room, str):
            raise BookingNotSupported(
                f"{room_id} is a {room} calendar room: booking it through the agent is not "
                "supported yet; book it in its calendar"
            )
        source, cal = room
        return await self._book_calendar(source, cal, order, request_uuid)

    async def release(self, room_id: str, booking_id: str) -> Booking:
        """Delete a booking of the calendar-only room ``room_id`` in its calendar;
        ``booking.deleted`` follows from its next round, fetched now."""
        room = self.room(room_id)
        if room is None:
            raise LookupError(f"unknown room {room_id!r}")
        if isinstance(room, str):
            raise BookingNotSupported(
                f"{room_id} is a {room} calendar room: releasing through the agent is not "
                "supported yet"
            )
        from edge_agent.calendars.errors import CalendarSourceError
        from edge_agent.session import BookingRejected

        source, cal = room
        booker = await self._calendar_ready(source, cal)
        state = await self._calendar_state(cal.room_id, source)
        stored = state.bookings.get(booking_id) if state is not None else None
        if stored is None:
            raise LookupError(f"{room_id}: no booking {booking_id!r} in the room's calendar window")
        try:
            await booker.delete_event(cal.room_id, cal.mailbox, booking_id)
        except CalendarSourceError as exc:
            raise BookingRejected(str(exc)) from None
        assert self._store is not None
        from edge_agent.store.base import Change

        # The agent's own copy (made when it booked it) must not hold the slot any more.
        await self._store.commit(Change(cal.room_id, window_delete=[booking_id]))
        self._calendars.poke(source, cal.room_id)
        log.info("calendar booking deleted", room=room_id, booking_id=booking_id)
        return stored.to_booking()

    async def _calendar_ready(
        self, source: str, room: CalendarRoom
    ) -> GraphBooking | GoogleBooking:
        """The booker, once the room's calendar can take a change now.

        Raises:
            CalendarUnavailable: no client or token, the room not read yet, or its last
                round failed.
        """
        rid = room.room_id
        if source == "google":
            return await self._google_booker(room)
        from edge_agent.calendars.graph.booking import GraphBooking

        if (
            self._calendars.graph_http is None
            or self._calendars.graph_tokens is None
            or self._calendars.graph is None
        ):
            raise CalendarUnavailable(f"{rid}: the Graph calendar source is not running yet")
        self._check_round(rid, self._calendars.graph.status().get(rid))
        try:
            await self._calendars.graph_tokens.token()
        except Exception as exc:  # noqa: BLE001 - any token failure means: not now
            raise CalendarUnavailable(f"{rid}: no Graph token: {exc}") from None
        ms = self._config.microsoft
        assert ms is not None
        client = self._calendars.graph_client
        return GraphBooking(
            self._calendars.graph_http,
            self._calendars.graph_tokens,
            graph_url=ms.graph_url,
            # the poller's per-mailbox gate: a booking's 429 holds the mailbox's polls back too
            gates=client.gates if client is not None else None,
            wall=lambda: self._clock.now().timestamp(),
        )

    async def _google_booker(self, room: CalendarRoom) -> GoogleBooking:
        """A Google room's booker: the poller's HTTP client, and a token source of its own,
        since an insert needs the write scope the poller's ``calendar.readonly`` lacks."""
        from edge_agent.calendars.google.auth import ServiceAccountTokens
        from edge_agent.calendars.google.booking import BOOKING_SCOPE, GoogleBooking

        rid, g = room.room_id, self._config.google
        if self._calendars.google_http is None or self._calendars.google is None or g is None:
            raise CalendarUnavailable(f"{rid}: the Google calendar source is not running yet")
        self._check_round(rid, self._calendars.google.status().get(rid))
        tokens = self._google_booking_tokens
        try:
            if tokens is None:
                tokens = ServiceAccountTokens(
                    service_account_file=g.service_account_file,
                    subject=g.subject,
                    scopes=(BOOKING_SCOPE,),
                    ca_file=str(g.ca_file) if g.ca_file else None,
                )
                self._google_booking_tokens = tokens
            await tokens.token()
        except Exception as exc:  # noqa: BLE001 - any token failure means: not now
            raise CalendarUnavailable(
                f"{rid}: no Google token with the scope {BOOKING_SCOPE} (domain-wide "
                f"delegation): {exc}"
            ) from None
        client = self._calendars.google_client
        return GoogleBooking(
            self._calendars.google_http,
            tokens,
            calendar_url=g.calendar_url,
            # the poller's limiter: bookings count against the same per-user quota
            limiter=client.limiter if client is not None else None,
            subject=g.subject,
            wall=lambda: self._clock.now().timestamp(),
        )

    @staticmethod
    def _check_round(rid: str, st: Any) -> None:
        """Refuse (CalendarUnavailable) a room not read yet or whose last round failed."""
        if st is None or st.last_sync is None:
            why = st.last_error if st is not None and st.last_error else "not read yet"
            raise CalendarUnavailable(f"{rid}: the room's calendar is not available ({why})")
        if st.last_error:
            raise CalendarUnavailable(
                f"{rid}: the room's last calendar round failed: {st.last_error}"
            )

    async def _calendar_state(self, room_id: str, source: str) -> SyncState | None:
        from edge_agent.store.calendar import RoomCalendarStore

        assert isinstance(self._store, Store)  # calendar rooms run on SQLite only
        return await RoomCalendarStore(
            self._store, site=self._config.site, source=source
        ).load_sync_state(room_id)

    def _calendar_lock(self, room_id: str) -> asyncio.Lock:
        # One order at a time per room: two overlapping orders must not both pass the check.
        return self._locks.setdefault(room_id, asyncio.Lock())

    async def _book_calendar(
        self, source: str, room: CalendarRoom, order: BookingOrder, request_uuid: str
    ) -> BookingSent:
        """Check, record, then create the event in the background; the request is pending.

        Raises:
            CalendarUnavailable: see :meth:`_calendar_ready` (nothing recorded or sent).
            OrderRefused: overlap or outside the window (nothing recorded or sent).
            StoreError: the request could not be recorded (nothing sent).
        """
        from datetime import timedelta

        from edge_agent.bookings.book import check_order
        from edge_agent.bookings.events import make_envelope
        from edge_agent.bookings.pending import PendingRequest
        from edge_agent.calendars.model import CalendarBooking
        from edge_agent.clock import utc_iso
        from edge_agent.store.base import Change, PendingRow

        assert self._store is not None and self._tg is not None
        rid = room.room_id
        booker = await self._calendar_ready(source, room)
        async with self._calendar_lock(rid):
            state = await self._calendar_state(rid, source)
            if state is None or state.window is None:
                raise CalendarUnavailable(f"{rid}: the room's calendar is not read yet")
            now = self._clock.now()
            window = [b.to_booking() for b in state.bookings.values() if not b.cancelled]
            poller = self._calendars.google if source == "google" else self._calendars.graph
            st = poller.status().get(rid) if poller is not None else None
            synced = st.last_sync.timestamp() if st is not None and st.last_sync else 0.0
            for key, row in (await self._store.load_window(rid)).items():
                # Booked here and not yet seen by a round: it holds its slot meanwhile.
                if key not in state.bookings and float(row.get("booked_at") or 0) > synced:
                    with contextlib.suppress(ValueError):
                        window.append(CalendarBooking.from_row(row).to_booking())
            pending: list[PendingRequest] = []
            lapsed: list[PendingRequest] = []
            for p in await self._store.load_pending(rid):
                with contextlib.suppress(ValueError):
                    req = PendingRequest.from_row(p.row)
                    (pending if req.deadline > now else lapsed).append(req)
            if lapsed:  # left by an agent that stopped while they were pending
                await self._expire_calendar_requests(rid, lapsed, source)
            start = check_order(order, window, state.window, now, pending=pending)
            deadline = now + timedelta(seconds=CALENDAR_BOOK_TIMEOUT_S)
            request = {
                **order.to_dict(),
                "start": utc_iso(start),
                "requested_at": utc_iso(now),
                "expires_at": utc_iso(deadline),
            }
            await self._store.record_request(request_uuid, rid, request)
            req = PendingRequest(
                rid, request_uuid, order.title, start, order.duration_min, now, deadline
            )
            env = make_envelope(
                "booking.requested",
                site=self._config.site,
                device_id=None,
                room_id=rid,
                source=source,
                now=now,
                extra={"booking_request_uuid": request_uuid, "request": req.to_dict()},
            )
            kept = PendingRow(rid, request_uuid, deadline.timestamp(), req.to_row())
            await self._store.commit(Change(rid, pending_upsert=[kept], events=[env]))
        task = self._tg.create_task(
            self._follow_calendar_request(booker, source, room, order, req),
            name=f"book[{rid}:{request_uuid}]",
        )
        self._tasks.append(task)  # cancelled at shutdown; the request then expires
        task.add_done_callback(self._tasks.remove)
        log.info("calendar booking requested", room=rid, booking_request_uuid=request_uuid)
        return BookingSent(request_uuid, deadline, answered=False)

    async def _expire_calendar_requests(
        self, room_id: str, reqs: list[PendingRequest], source: str
    ) -> None:
        from edge_agent.bookings.events import make_envelope
        from edge_agent.store.base import Change

        assert self._store is not None
        now = self._clock.now()
        events = [
            make_envelope(
                "booking.request_expired",
                site=self._config.site,
                device_id=None,
                room_id=room_id,
                source=source,
                now=now,
                extra={"booking_request_uuid": r.booking_request_uuid, "request": r.to_dict()},
            )
            for r in reqs
        ]
        uuids = [r.booking_request_uuid for r in reqs]
        await self._store.commit(Change(room_id, pending_delete=uuids, events=events))

    async def _follow_calendar_request(
        self,
        booker: GraphBooking | GoogleBooking,
        source: str,
        room: CalendarRoom,
        order: BookingOrder,
        req: PendingRequest,
    ) -> None:
        """Create the event (sent again with the same ``transactionId`` until answered or the
        deadline), then close the request: created, failed (a refusal) or expired. Never
        raises: it runs in the agent's TaskGroup, which one failed request must not end."""
        try:
            await self._create_calendar_event(booker, source, room, order, req)
        except Exception:
            # A store that cannot commit the outcome: the request reads as overdue after its
            # deadline (request_view) until it is dropped after a day, and the room's next
            # round still reports the event.
            log.exception(
                "calendar booking: the outcome could not be stored",
                room=room.room_id,
                booking_request_uuid=req.booking_request_uuid,
            )

    async def _create_calendar_event(
        self,
        booker: GraphBooking | GoogleBooking,
        source: str,
        room: CalendarRoom,
        order: BookingOrder,
        req: PendingRequest,
    ) -> None:
        from datetime import timedelta

        from edge_agent.bookings.events import make_envelope
        from edge_agent.bookings.pending import Resolution
        from edge_agent.calendars.errors import CalendarSourceError
        from edge_agent.calendars.google import events as google_events
        from edge_agent.calendars.google.errors import GoogleUnavailable
        from edge_agent.calendars.graph import events as graph_events
        from edge_agent.calendars.graph.errors import GraphUnavailable
        from edge_agent.calendars.sync import Upsert
        from edge_agent.clock import parse_utc
        from edge_agent.store.base import Change

        assert self._store is not None and req.start is not None
        rid, uid = room.room_id, req.booking_request_uuid
        common: dict[str, Any] = {
            "site": self._config.site,
            "device_id": None,
            "room_id": rid,
            "source": source,
        }
        attempt = 0
        event: dict[str, Any] | None = None
        failure: str | None = None
        try:
            async with asyncio.timeout((req.deadline - self._clock.now()).total_seconds()):
                while event is None and failure is None:
                    attempt += 1
                    try:
                        event = await booker.create_event(
                            rid,
                            room.mailbox,
                            request_uuid=uid,
                            title=order.title,
                            start=req.start,
                            end=req.start + timedelta(minutes=order.duration_min),
                            organizer=order.organizer,
                        )
                    except (GraphUnavailable, GoogleUnavailable) as exc:
                        # Idempotent (Graph's transactionId, Google's event id): keep trying
                        # until the deadline.
                        log.warning(
                            "calendar booking: calendar unavailable; retrying",
                            room=rid,
                            booking_request_uuid=uid,
                            error=str(exc),
                        )
                        await asyncio.sleep(min(30.0, 2.0 * attempt))
                    except CalendarSourceError as exc:
                        failure = str(exc)
        except TimeoutError:
            pass
        now = self._clock.now()
        if event is not None:
            if source == "google":
                items, _ = google_events.to_delta_items([event], room.time_zone)
            else:
                items, _ = graph_events.to_delta_items([event], {}, room.time_zone)
            if items and isinstance(items[0], Upsert):
                cb = items[0].booking
                booking = dataclasses.replace(cb.to_booking(), booking_request_uuid=uid)
                row = {**cb.to_row(), **booking.to_dict(), "booked_at": now.timestamp()}
                stale = []  # the agent's own copies of bookings that are over
                for k, r in (await self._store.load_window(rid)).items():
                    with contextlib.suppress(ValueError, TypeError):
                        if parse_utc(str(r.get("end"))) < now:
                            stale.append(k)
                env = make_envelope(
                    "booking.created",
                    booking=booking,
                    now=now,
                    extra={"pending_ms": Resolution("created", req, now).pending_ms},
                    **common,
                )
                await self._store.commit(
                    Change(
                        rid,
                        window_upsert={cb.id: row},
                        window_delete=stale,
                        pending_delete=[uid],
                        events=[env],
                    )
                )
                self._calendars.poke(source, rid)
                log.info(
                    "calendar booking created",
                    room=rid,
                    booking_request_uuid=uid,
                    booking_id=cb.id,
                    meeting_id=cb.meeting_id,
                )
                return
            failure = f"the calendar answered the create with an unreadable event: {event!r:.200}"
        if failure is not None:
            env = make_envelope(
                "booking.failed",
                now=now,
                extra={
                    "booking_request_uuid": uid,
                    "cause": failure,
                    "request": req.to_dict(),
                    "pending_ms": Resolution("failed", req, now).pending_ms,
                },
                **common,
            )
            log.error("calendar booking failed", room=rid, booking_request_uuid=uid, cause=failure)
        else:
            env = make_envelope(
                "booking.request_expired",
                now=now,
                extra={"booking_request_uuid": uid, "request": req.to_dict()},
                **common,
            )
            log.warning("calendar booking expired", room=rid, booking_request_uuid=uid)
        await self._store.commit(Change(rid, pending_delete=[uid], events=[env]))
