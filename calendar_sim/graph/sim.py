"""``GraphSim``: the Microsoft Graph + identity platform fake, in process (tests) or by CLI.

sim = GraphSim(GraphSimConfig(rooms=3, start=datetime(2026, 11, 23, 7, tzinfo=UTC),
                              frozen=True, generate_days=5))
await sim.start()
sim.authority_url, sim.graph_url, sim.cert_pem    # what the agent is configured with
ev = sim.add_event("room-1@contoso.com", start, minutes=30, subject="Planning")
sim.move_event(...); sim.cancel_event(...); sim.delete_event(...)   # "in Outlook"
sim.throttle("room-1@contoso.com", retry_after=2, count=1)         # faults
sim.clock.advance(3600)
await sim.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from ..common import ControlServer, Fault, FaultTable, HttpsSite, make_clock
from .api import GraphApi
from .delta import SyncStates
from .directory import Directory, EventSpec
from .generator import office_days
from .identity import AppRegistration, Identity
from .model import Event, Mailbox, Recurrence
from .subscriptions import Subscriptions

log = logging.getLogger(__name__)


@dataclass
class GraphSimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    tenant_id: str = "6f1c9a4e-0000-4000-8000-00000000c0de"
    tenant_domains: tuple[str, ...] = ("contoso.onmicrosoft.com",)
    client_id: str = "0b7e5f5a-0000-4000-8000-0000000a9e17"
    client_secret: str | None = "graph-sim-secret"
    client_certificates: list[bytes] = field(default_factory=list)  # PEM, registered on the app
    roles: tuple[str, ...] = ("Calendars.ReadWrite", "Place.Read.All")
    token_lifetime_s: int = 3599
    start: datetime | None = None  # simulated start (UTC); None: now
    speed: float = 1.0
    frozen: bool = False  # the clock moves only by advance()
    seed: int = 1
    rooms: int = 0  # room-1@domain .. room-N@domain at start
    domain: str = "contoso.com"
    time_zone: str = "Europe/Oslo"
    generate_days: int = 0  # office days of bookings per generated room, from the start
    mailbox_concurrency: int = 4
    # An event that left a delta round's range comes back with every field null (reported on
    # Microsoft Q&A 1190523) instead of ``@removed``; deleted events keep ``@removed``.
    out_of_range_as_nulls: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    notification_ca_pem: bytes | None = None  # trust for https notification URLs
    allow_http_notifications: bool = False
    validation_timeout_s: float = 10.0
    notification_timeout_s: float = 10.0
    control_port: int | None = None  # serve the control API (plain HTTP, 127.0.0.1)


STATUS_FAULTS: dict[str, tuple[int, str, str]] = {
    "throttle": (429, "TooManyRequests", "Too many requests, retry after the given delay."),
    "sync_reset": (410, "SyncStateNotFound", "The sync state generation is not found."),
    "unauthorized": (
        401,
        "InvalidAuthenticationToken",
        "Lifetime validation failed, the token is expired.",
    ),
    "unavailable": (503, "ServiceNotAvailable", "The service is temporarily unavailable."),
}


def fault_from_json(body: dict[str, Any]) -> Fault:
    """A fault from the control API: a ``kind`` of the table, or one of ``STATUS_FAULTS``."""
    kind = str(body.get("kind", ""))
    count = None if body.get("count") is None else int(body["count"])
    retry = None if body.get("retry_after") is None else float(body["retry_after"])
    common: dict[str, Any] = {
        "mailbox": body.get("mailbox"),
        "route": body.get("route"),
        "count": count,
    }
    if kind in STATUS_FAULTS:
        status, code, message = STATUS_FAULTS[kind]
        if kind == "sync_reset":
            common["route"] = common["route"] or "delta_link"
        if kind in ("throttle", "unavailable") and retry is None:
            retry = 2.0
        return Fault(
            "status", status=status, code=code, message=message, retry_after=retry, **common
        )
    if kind == "status":
        return Fault(
            "status",
            status=int(body.get("status", 503)),
            code=str(body.get("code", "")),
            message=str(body.get("message", "")),
            retry_after=retry,
            **common,
        )
    if kind == "slow":
        return Fault("slow", delay_s=float(body.get("delay_s", 1.0)), **common)
    if kind == "hold":
        return Fault("hold", **common)
    raise ValueError(
        f"unknown fault kind {kind!r} (one of {', '.join([*STATUS_FAULTS, 'status', 'slow', 'hold'])})"
    )


class GraphSim:
    def __init__(self, config: GraphSimConfig | None = None) -> None:
        self.config = cfg = config or GraphSimConfig()
        self.clock = make_clock(cfg.start, cfg.speed, frozen=cfg.frozen)
        self.faults = FaultTable()
        self.directory = Directory(self.clock, cfg.domain)
        self.sync_states = SyncStates()
        self.app_registration = AppRegistration(
            cfg.client_id, cfg.client_secret, list(cfg.client_certificates), tuple(cfg.roles)
        )
        self.identity = Identity(
            cfg.tenant_id,
            cfg.tenant_domains,
            [self.app_registration],
            self.clock.now,
            cfg.token_lifetime_s,
        )
        ssl_context: ssl.SSLContext | None = None
        if cfg.notification_ca_pem is not None:
            ssl_context = ssl.create_default_context(cadata=cfg.notification_ca_pem.decode())
        self.subscriptions = Subscriptions(
            self.directory,
            self.clock,
            cfg.tenant_id,
            ssl_context=ssl_context,
            allow_http=cfg.allow_http_notifications,
            validation_timeout_s=cfg.validation_timeout_s,
            notification_timeout_s=cfg.notification_timeout_s,
        )
        self.api = GraphApi(self)
        self.site = HttpsSite(
            self.api.app, cfg.host, cfg.port, cert_file=cfg.cert_file, key_file=cfg.key_file
        )
        self.control: ControlServer | None = None
        self._runner: asyncio.Task[None] | None = None
        for k in range(1, cfg.rooms + 1):
            self.add_room(f"room-{k}@{cfg.domain}", f"Room {k}", generate_days=cfg.generate_days)

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

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the certificate, listen, start the notifier (and the control API if asked)."""
        await self.site.start()
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run(started), name="graph-sim")
        await started.wait()
        if self.config.control_port is not None:
            from .control import add_routes

            self.control = ControlServer(
                self.clock, self.faults, fault_from_json, port=self.config.control_port
            )
            add_routes(self.control.app, self)
            await self.control.start()
        log.info("graph-sim: listening on %s", self.url)

    async def _run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.subscriptions.run(), name="graph-sim.notifier")
            started.set()

    async def stop(self) -> None:
        """Close listeners and the notifier. Safe to call twice."""
        if self.control is not None:
            await self.control.stop()
            self.control = None
        for fault in self.faults.faults:
            fault.release()
        await self.site.stop()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None

    # ---- where the agent points ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.site.url

    @property
    def authority_url(self) -> str:
        """``[microsoft] authority_url`` (the tenant is appended by the client)."""
        return self.site.url

    @property
    def graph_url(self) -> str:
        """``[microsoft] graph_url``."""
        return f"{self.site.url}/v1.0"

    @property
    def cert_pem(self) -> bytes:
        """The serving certificate (the client's CA file)."""
        return self.site.cert_pem

    # ---- rooms ---------------------------------------------------------------------------------

    def add_room(
        self,
        address: str,
        display_name: str | None = None,
        *,
        time_zone: str | None = None,
        is_room: bool = True,
        generate_days: int = 0,
        capacity: int = 8,
    ) -> Mailbox:
        """A room (or, with ``is_room=False``, a user mailbox); ``generate_days`` of bookings."""
        tz = time_zone or self.config.time_zone
        box = self.directory.add_mailbox(
            address, display_name, time_zone=tz, is_room=is_room, capacity=capacity
        )
        for spec in office_days(
            self.config.seed, address, self.clock.start, tz, generate_days, self.config.domain
        ):
            self.directory.create(box, spec)
        return box

    def remove_room(self, address: str, *, keep_mailbox: bool = False) -> None:
        """The room leaves the directory (and, unless ``keep_mailbox``, the tenant)."""
        if keep_mailbox:
            self.directory.mailbox(address).is_room = False
        else:
            self.directory.remove_mailbox(address)
            self.sync_states.invalidate(address)

    # ---- events "in Outlook" ------------------------------------------------------------------

    def add_event(
        self,
        mailbox: str,
        start: datetime,
        minutes: int = 30,
        subject: str = "Meeting",
        *,
        organizer: tuple[str, str] | None = None,
        join_url: str | None = None,
        sensitivity: str = "normal",
        recurrence: Recurrence | None = None,
        is_all_day: bool = False,
    ) -> Event:
        box = self.directory.mailbox(mailbox)
        name, address = organizer or ("Ola Olsen", f"ola.olsen@{self.config.domain}")
        spec = EventSpec(
            subject=subject,
            start=start,
            end=start + timedelta(minutes=minutes),
            time_zone=box.time_zone,
            organizer_name=name,
            organizer_address=address,
            join_url=join_url,
            sensitivity=sensitivity,
            recurrence=recurrence,
            is_all_day=is_all_day,
        )
        event, _ = self.directory.create(box, spec)
        return event

    def move_event(
        self, mailbox: str, event_id: str, start: datetime, minutes: int | None = None
    ) -> Event:
        box = self.directory.mailbox(mailbox)
        length = None if minutes is None else timedelta(minutes=minutes)
        return self.directory.move(box, event_id, start, length)

    def cancel_event(self, mailbox: str, event_id: str) -> Event:
        """The organizer cancelled: the room's copy shows ``isCancelled: true``."""
        return self.directory.cancel(self.directory.mailbox(mailbox), event_id)

    def delete_event(self, mailbox: str, event_id: str) -> None:
        self.directory.delete(self.directory.mailbox(mailbox), event_id)

    def events(self, mailbox: str) -> list[Event]:
        return list(self.directory.mailbox(mailbox).events.values())

    # ---- faults ---------------------------------------------------------------------------------

    def fault(self, kind: str, mailbox: str | None = None, **args: Any) -> Fault:
        """Add a fault (see ``fault_from_json`` for kinds and arguments)."""
        return self.faults.add(fault_from_json({"kind": kind, "mailbox": mailbox, **args}))

    def throttle(
        self,
        mailbox: str | None = None,
        retry_after: float = 2.0,
        count: int | None = 1,
        route: str | None = None,
    ) -> Fault:
        """429 with ``Retry-After``."""
        return self.fault("throttle", mailbox, retry_after=retry_after, count=count, route=route)

    def expire_sync_state(self, mailbox: str | None = None) -> int:
        """Forget the delta/next links handed out: their next use gets 410 SyncStateNotFound."""
        return self.sync_states.invalidate(mailbox)

    def expire_tokens(self) -> None:
        """Every access token issued so far gets 401 InvalidAuthenticationToken."""
        self.identity.expire_all()

    def lifecycle(self, subscription_id: str, event: str) -> None:
        """Send ``reauthorizationRequired``, ``subscriptionRemoved`` or ``missed``."""
        self.subscriptions.lifecycle(subscription_id, event)

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "authority_url": self.authority_url,
            "graph_url": self.graph_url,
            "tenant_id": self.config.tenant_id,
            "client_id": self.config.client_id,
            "now": self.clock.now().isoformat(),
            "rooms": len(self.directory.rooms()),
            "mailboxes": len(self.directory.mailboxes),
            "events": sum(len(b.events) for b in self.directory.mailboxes.values()),
            "tokens_issued": self.identity.issued,
            "requests": dict(self.api.requests),
            "in_flight": dict(self.api.in_flight),
            "subscriptions": len(self.subscriptions.items),
            "notifications": len(self.subscriptions.deliveries),
            "faults": self.faults.describe(),
        }
