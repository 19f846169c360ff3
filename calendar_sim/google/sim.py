"""``GoogleSim``: the Google Workspace fake (OAuth token endpoint for service accounts,
Admin SDK Directory calendar resources, Calendar events with page and sync tokens, watch
channels, faults), in process for tests.

    sim = GoogleSim(GoogleSimConfig(start=..., frozen=True, rooms=3))
    await sim.start()
    sim.key_file()            # the service account JSON key (token_uri points at the fake)
    sim.directory_url, sim.calendar_url, sim.cert_pem
    sim.add_event("room-1@example.com", start, 30, "Planning"); sim.move_event(...)
    sim.cancel_event(...); sim.expire_sync_tokens(...); sim.fault("throttle", cal, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric import rsa

from ..common import Fault, FaultTable, HttpsSite, make_clock
from .api import GoogleApi, new_event_id
from .channels import Channels
from .identity import CALENDAR_SCOPES, DIRECTORY_SCOPES, GoogleIdentity, ServiceAccount
from .model import GEvent, ResourceCalendar
from .quota import PROJECT_PER_MINUTE, USER_PER_MINUTE

TITLES = ("Weekly sync", "Design review", "1:1", "Customer call", "Planning", "Interview")

STATUS_FAULTS: dict[str, tuple[int, str, str]] = {
    "throttle": (429, "rateLimitExceeded", "Rate Limit Exceeded"),
    "quota": (403, "rateLimitExceeded", "Rate Limit Exceeded"),
    "sync_reset": (
        410,
        "fullSyncRequired",
        "Sync token is no longer valid, a full sync is required.",
    ),
    "unavailable": (503, "backendError", "Backend Error"),
}


@dataclass
class GoogleSimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    domain: str = "example.com"
    admin: str = "admin@example.com"  # the user the service account impersonates
    customer_id: str = "C01sim0ck"
    start: datetime | None = None
    speed: float = 1.0
    frozen: bool = False
    rooms: int = 0
    token_lifetime_s: int = 3599
    delegate: bool = True  # grant domain-wide delegation of both read scopes (and write)
    # With delegate: exactly these scopes for the client ID (None: every Calendar and
    # Directory scope), as an admin lists them in the Admin console.
    delegated_scopes: tuple[str, ...] | None = None
    notification_ca_pem: bytes | None = None
    allow_http_notifications: bool = False
    user_quota_per_min: int = USER_PER_MINUTE  # the usage-limits guide's defaults; 0 = off
    project_quota_per_min: int = PROJECT_PER_MINUTE
    generate_days: int = 0  # office-hours meetings per room on each of the first N days
    seed: int = 1


def fault_from_json(body: dict[str, Any]) -> Fault:
    kind = str(body.get("kind", ""))
    count = None if body.get("count") is None else int(body["count"])
    retry = None if body.get("retry_after") is None else float(body["retry_after"])
    common: dict[str, Any] = {
        "mailbox": body.get("calendar") or body.get("mailbox"),
        "route": body.get("route"),
        "count": count,
    }
    if kind in STATUS_FAULTS:
        status, code, message = STATUS_FAULTS[kind]
        if kind == "sync_reset":
            common["route"] = common["route"] or "sync_token"
        return Fault(
            "status", status=status, code=code, message=message, retry_after=retry, **common
        )
    if kind == "slow":
        return Fault("slow", delay_s=float(body.get("delay_s", 1.0)), **common)
    if kind == "hold":
        return Fault("hold", **common)
    raise ValueError(
        f"unknown fault kind {kind!r} (one of {', '.join([*STATUS_FAULTS, 'slow', 'hold'])})"
    )


class GoogleSim:
    def __init__(self, config: GoogleSimConfig | None = None) -> None:
        self.config = cfg = config or GoogleSimConfig()
        self.clock = make_clock(cfg.start, cfg.speed, frozen=cfg.frozen)
        self.faults = FaultTable()
        self.calendars: dict[str, ResourceCalendar] = {}
        account = ServiceAccount(
            client_email="edge-agent@graph-sim.iam.gserviceaccount.com",
            client_id=str(uuid.uuid4().int)[:21],
            private_key_id=uuid.uuid4().hex,
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )
        if cfg.delegate:
            account.delegated_scopes = (
                set(CALENDAR_SCOPES) | set(DIRECTORY_SCOPES)
                if cfg.delegated_scopes is None
                else set(cfg.delegated_scopes)
            )
        self.identity = GoogleIdentity(account, {cfg.admin}, self.clock.now, cfg.token_lifetime_s)
        tls = None
        if cfg.notification_ca_pem is not None:
            tls = ssl.create_default_context(cadata=cfg.notification_ca_pem.decode())
        self.channels = Channels(self.clock, tls, cfg.allow_http_notifications)
        self.api = GoogleApi(self)
        self.site = HttpsSite(self.api.app, cfg.host, cfg.port)
        self._runner: asyncio.Task[None] | None = None
        self._counter = 0
        for k in range(1, cfg.rooms + 1):
            self.add_room(f"room-{k}@{cfg.domain}", f"Room {k}")
        if cfg.generate_days > 0:
            self.generate(cfg.generate_days, cfg.seed)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.site.start()
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run(started), name="google-sim")
        await started.wait()

    async def _run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.channels.run(), name="google-sim.channels")
            started.set()

    async def stop(self) -> None:
        for fault in self.faults.faults:
            fault.release()
        await self.site.stop()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None

    @property
    def url(self) -> str:
        return self.site.url

    @property
    def token_uri(self) -> str:
        return f"{self.site.url}/token"

    @property
    def directory_url(self) -> str:
        return self.site.url

    @property
    def calendar_url(self) -> str:
        return f"{self.site.url}/calendar/v3"

    @property
    def cert_pem(self) -> bytes:
        return self.site.cert_pem

    def key_file(self) -> dict[str, Any]:
        """The service account's JSON key; only valid once started (``token_uri``)."""
        return self.identity.account.key_file(self.token_uri)

    # ---- rooms and events "in the calendar" -----------------------------------------------------

    def add_room(
        self,
        email: str,
        name: str | None = None,
        capacity: int = 8,
        *,
        category: str = "CONFERENCE_ROOM",
        resource_type: str = "Conference room",
    ) -> ResourceCalendar:
        """A resource calendar; ``category="OTHER"`` (with a ``resource_type`` such as
        "Projector") for equipment, which the Directory lists with the rooms."""
        key = email.lower()
        if key in self.calendars:
            raise ValueError(f"resource {email} exists already")
        cal = ResourceCalendar(
            email,
            name or email.split("@")[0],
            str(uuid.uuid5(uuid.NAMESPACE_URL, key).int)[:11],
            capacity,
            category=category,
            resource_type=resource_type,
        )
        self.calendars[key] = cal
        return cal

    def remove_room(self, email: str) -> None:
        self.calendars.pop(email.lower())
        self.api.forget(email.lower())

    def create(
        self,
        cal: ResourceCalendar,
        summary: str,
        start: datetime,
        end: datetime,
        *,
        organizer: str,
        event_id: str | None = None,
        all_day: bool = False,
        hangout_link: str | None = None,
        daily_count: int = 0,
    ) -> GEvent:
        now = self.clock.now()
        dates = None
        if all_day:
            dates = (start.date(), end.date())
            start = datetime.combine(dates[0], datetime.min.time(), tzinfo=UTC)
            end = datetime.combine(dates[1], datetime.min.time(), tzinfo=UTC)
        event = GEvent(
            event_id or new_event_id(),
            summary,
            start.astimezone(UTC),
            end.astimezone(UTC),
            organizer,
            now,
            now,
            cal.bump(),
            dates,
            hangout_link=hangout_link,
            daily_count=daily_count,
        )
        cal.events[event.id] = event
        self.channels.changed(cal.email)
        return event

    def add_event(
        self,
        calendar: str,
        start: datetime,
        minutes: int = 30,
        summary: str = "Meeting",
        *,
        organizer: str | None = None,
        daily_count: int = 0,
        hangout_link: str | None = None,
    ) -> GEvent:
        """An event (a daily series of ``daily_count`` when > 0) made in Google Calendar."""
        cal = self.calendars[calendar.lower()]
        return self.create(
            cal,
            summary,
            start,
            start + timedelta(minutes=minutes),
            organizer=organizer or f"ola.olsen@{self.config.domain}",
            daily_count=daily_count,
            hangout_link=hangout_link,
        )

    def add_all_day(
        self, calendar: str, day: date, days: int = 1, summary: str = "All day"
    ) -> GEvent:
        cal = self.calendars[calendar.lower()]
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        return self.create(
            cal,
            summary,
            start,
            start + timedelta(days=days),
            organizer=f"ola.olsen@{self.config.domain}",
            all_day=True,
        )

    def generate(self, days: int, seed: int) -> int:
        """Seeded meetings in every room: on each of ``days`` days from the simulated start's
        UTC midnight, 30-90 min slots between 08:00 and 18:00 UTC, about half of them taken.
        Same seed, same rooms, same start: the same calendars. Returns the events made."""
        midnight = (
            self.clock.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        )
        made = 0
        for cal in list(self.calendars.values()):
            rng = random.Random(f"{seed}:{cal.email.lower()}")
            for day in range(days):
                slot = midnight + timedelta(days=day, hours=8)
                end_of_day = midnight + timedelta(days=day, hours=18)
                while slot < end_of_day:
                    minutes = rng.choice((30, 60, 90))
                    if rng.random() < 0.5:
                        self.add_event(cal.email, slot, minutes, rng.choice(TITLES))
                        made += 1
                    slot += timedelta(minutes=minutes)
        return made

    def _touch(self, cal: ResourceCalendar, event: GEvent) -> GEvent:
        event.seq = cal.bump()
        event.sequence += 1
        event.updated = self.clock.now()
        self.channels.changed(cal.email)
        return event

    def move_event(
        self, calendar: str, event_id: str, start: datetime, minutes: int | None = None
    ) -> GEvent:
        cal = self.calendars[calendar.lower()]
        event = cal.events[event_id]
        length = event.end - event.start if minutes is None else timedelta(minutes=minutes)
        event.start, event.end = start.astimezone(UTC), start.astimezone(UTC) + length
        return self._touch(cal, event)

    def cancel_event(self, calendar: str, event_id: str) -> GEvent:
        """Cancelled or deleted: Google keeps a ``status: cancelled`` tombstone for sync."""
        cal = self.calendars[calendar.lower()]
        event = cal.events[event_id]
        event.status = "cancelled"
        return self._touch(cal, event)

    # ---- faults -------------------------------------------------------------------------------

    def fault(self, kind: str, calendar: str | None = None, **args: Any) -> Fault:
        return self.faults.add(fault_from_json({"kind": kind, "calendar": calendar, **args}))

    def expire_sync_tokens(self, calendar: str | None = None) -> int:
        """Forget the page and sync tokens: their next use gets 410 ``fullSyncRequired``."""
        return self.api.forget(None if calendar is None else calendar.lower())

    def expire_tokens(self) -> None:
        self.identity.expire_all()
