"""One fleet member: heartbeat, which devices and rooms to hold, taking and giving up leases.

Every ``lease_s / 3`` the member heartbeats, reads the live members, renews the leases it
holds, gives up the devices rendezvous hashing now gives to another live member (session
stopped first, then the lease released, so the next owner starts at once and the two never
overlap), and takes the free leases of the devices that are its own.

A lease is considered lost locally at ``t0 + lease_s``, ``t0`` being the moment (monotonic)
before the renewal that last succeeded was sent: the database extended it from a later
instant, so the member always stops before the database would let another member in. When
the database cannot be reached, or the process was frozen (SIGSTOP, a VM pause), the member
drops the device's session the moment that deadline passes, before anything else; and its
store refuses the device's commits from then on (and the database refuses any that were on
their way: the fencing token is checked in the commit's own transaction).

Calendar rooms go the same way (:mod:`edge_agent.fleet.keys`): a calendar-only room is leased
under ``room:<id>`` and polled (with its push subscription or watch channel) only by the member
that holds that lease; a linked room (room id = device id) goes with its device's lease. The
pollers tell the member which rooms their directories have (:meth:`FleetMember.set_rooms`);
``start_room`` / ``stop_room`` start and stop a room's polling as its lease (or its device's)
is taken, given up or lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import psycopg
import structlog

from edge_agent.fleet import leases
from edge_agent.fleet.assign import owner
from edge_agent.fleet.keys import room_key, room_of
from edge_agent.metrics import (
    FLEET_DEVICES_OWNED,
    FLEET_LEASE_LOSSES,
    FLEET_MEMBERS_LIVE,
    FLEET_OWNERSHIP_CHANGES,
)
from edge_agent.store.postgres import PostgresStore

log = structlog.get_logger(__name__)


class FleetMember:
    """Runs this agent's membership. :meth:`run` in the agent's TaskGroup; :meth:`leave` at
    shutdown (SIGTERM), which hands every device over at once."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        member_id: str,
        lease_s: float,
        devices: Iterable[str],
        start_session: Callable[[str], None],
        stop_session: Callable[[str, bool], Awaitable[None]],
        start_room: Callable[[str], None] | None = None,
        stop_room: Callable[[str, bool], Awaitable[None]] | None = None,
        info: Mapping[str, Any] | None = None,
        take_per_round: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            store: the open PostgreSQL store (fencing and drain ownership are set on it).
            member_id: this member's name, unique in the fleet.
            lease_s: how long a lease lasts without renewal (and a heartbeat counts as live).
            devices: the configured device ids (every member should have the same list).
            start_session: start the device's session (called once the lease is held).
            stop_session: stop it and wait until its socket is closed; the flag says the
                lease is already lost (nothing it still holds can be committed: do not wait).
            start_room: the calendar pollers may run this room now: a calendar-only room's
                lease was taken, or a device's (its linked room, same id, if it has one).
            stop_room: stop polling it (and its push subscription); the flag as above.
            info: shown with this member in ``/v1/fleet`` (version, API address...).
            take_per_round: most leases taken in one round (paces a connect storm).
            clock: monotonic seconds (local lease deadlines).
        """
        self.store = store
        self.member_id = member_id
        self.lease_s = lease_s
        self.interval_s = lease_s / 3
        self._devices: set[str] = set(devices)
        self._start = start_session
        self._stop = stop_session
        self._start_room = start_room
        self._stop_room = stop_room
        self._rooms: dict[str, set[str]] = {}  # source -> calendar-only room ids
        self._room_ids: set[str] = set()  # their union
        self._info = dict(info or {})
        self._clock = clock
        self._take_per_round = max(1, take_per_round)
        self._db_timeout_s = max(1.0, lease_s / 2)
        self.held: dict[str, int] = {}  # lease key (device id, room:<id>) -> fencing token
        self._deadline: dict[str, float] = {}  # device -> local monotonic deadline
        self._since: dict[str, float] = {}  # device -> when this member took it (monotonic)
        self.live: list[str] = []
        self._leaving = False
        # A round and leave() never overlap: a round still taking leases when SIGTERM comes
        # would otherwise start sessions after the member left (and keep those leases).
        self._round_lock = asyncio.Lock()
        self._failures = 0
        self._log = log.bind(member=member_id)
        self._refence()
        store.drains = self.drains

    # -- views --------------------------------------------------------------------------------

    def calendar_rooms(self) -> set[str]:
        """The calendar-only rooms the pollers' directories have (every source)."""
        return set(self._room_ids)

    def key_of(self, stream: str) -> str:
        """The lease key behind an outbox stream (a room id): its device's, or ``room:<id>``."""
        if stream in self._room_ids and stream not in self._devices:
            return room_key(stream)
        return stream

    def holds_room(self, room_id: str) -> bool:
        """Whether this member may poll ``room_id`` now (its lease, or its device's)."""
        return room_id in self.held or room_key(room_id) in self.held

    def rooms_held(self) -> set[str]:
        """The room ids this member may poll now: its devices and its calendar-only rooms."""
        return {room_of(k) or k for k in self.held}

    def drains(self, stream: str) -> bool:
        """Whether this member delivers ``stream``'s outbox: a device or room it holds, or a
        stream no lease covers (a device or room removed from the configuration) that hashing
        gives it."""
        key = self.key_of(stream)
        if key in self.held:
            return True
        return key not in self._keys() and owner(stream, self.live) == self.member_id

    def _keys(self) -> set[str]:
        return self._devices | {room_key(r) for r in self._room_ids - self._devices}

    def _refence(self) -> None:
        """Tell the store which rooms need a lease to commit, and under which key: every
        configured device and known room, and whatever this member still holds."""
        self._room_ids = set().union(*self._rooms.values()) if self._rooms else set()
        rooms = self._room_ids - self._devices
        held_rooms = {r for r in (room_of(k) for k in self.held) if r is not None}
        held_devices = {k for k in self.held if room_of(k) is None}
        self.store.fence(
            sorted(self._devices | held_devices | rooms | held_rooms),
            {r: room_key(r) for r in rooms | held_rooms},
        )

    async def snapshot(self) -> dict[str, Any]:
        """``/v1/fleet``: the members (with their devices and lease ages) as the database
        has them, and this member's view."""
        async with self.store.pool.connection() as conn:
            members, held = await leases.listing(conn)
        by_member: dict[str, list[dict[str, Any]]] = {}
        rooms_of: dict[str, list[dict[str, Any]]] = {}
        for lease in held:
            times = {
                "token": lease.token,
                "held_s": round(lease.held_s, 3),
                "expires_in_s": round(lease.expires_in_s, 3),
            }
            room = room_of(lease.device_id)
            if room is None:
                by_member.setdefault(lease.member_id, []).append(
                    {"device_id": lease.device_id} | times
                )
            else:
                rooms_of.setdefault(lease.member_id, []).append({"room_id": room} | times)
        leased = {x.device_id for x in held}
        live = set(self.live)
        return {
            "member_id": self.member_id,
            "lease_s": self.lease_s,
            "members": [
                {
                    "member_id": m.member_id,
                    "self": m.member_id == self.member_id,
                    "live": m.member_id in live,
                    "last_seen_age_s": round(m.last_seen_age_s, 3),
                    "up_s": round(m.up_s, 3),
                    "info": m.info,
                    "devices": by_member.get(m.member_id, []),
                    "rooms": rooms_of.get(m.member_id, []),
                }
                for m in members
            ],
            "unowned": sorted(self._devices - leased),
            "unowned_rooms": sorted(
                r for r in self.calendar_rooms() - self._devices if room_key(r) not in leased
            ),
        }

    # -- configuration ------------------------------------------------------------------------

    def set_devices(self, devices: Iterable[str]) -> None:
        """The configured devices changed (a reload): the next round takes and gives up."""
        self._devices = set(devices)
        self._refence()

    def set_rooms(self, source: str, rooms: Iterable[str]) -> None:
        """A poller's calendar-only rooms (configured and discovered, owned or not; linked
        rooms go with their devices): the next round takes this member's share and gives up
        what left. Every member's directory gives the same list, so they agree on the share."""
        self._rooms[source] = set(rooms)
        self._refence()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat and hold leases until cancelled. Cancelling it is safe (the leases then
        run out; call :meth:`leave` first to hand them over at once)."""
        while not self._leaving:
            await self.check_deadlines()
            try:
                await self.round()
                if self._failures:
                    self._log.info("fleet database reachable again", failures=self._failures)
                self._failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop survives; leases run out
                self._failures += 1
                if self._failures == 1 or self._failures % 10 == 0:
                    self._log.warning(
                        "fleet round failed; devices are dropped when their lease runs out",
                        error=repr(exc),
                        failures=self._failures,
                        held=len(self.held),
                    )
            await self.check_deadlines()
            await asyncio.sleep(self.interval_s)

    async def round(self) -> None:
        """One round: heartbeat, renew, give up what is another's, take what is ours."""
        async with self._round_lock:
            if not self._leaving:
                await self._round()

    async def _round(self) -> None:
        store, me = self.store, self.member_id
        t0 = self._clock()
        # Only the database calls are bounded here (stopping and starting sessions are not:
        # cancelling those midway would leave a session half-stopped); the local deadlines
        # are what keeps a slow round safe.
        async with asyncio.timeout(self._db_timeout_s), store.pool.connection() as conn:
            rooms = sum(1 for k in self.held if room_of(k) is not None)
            await leases.heartbeat(
                conn, me, self._info | {"devices": len(self.held) - rooms, "rooms": rooms}
            )
            live = await leases.live_members(conn, self.lease_s)
            renewed = await leases.renew(conn, me, self.held, self.lease_s)
        if me not in live:
            live.append(me)
        self.live = sorted(live)
        FLEET_MEMBERS_LIVE.set(len(self.live))
        for device in self.held:
            if device in renewed:
                self._deadline[device] = t0 + self.lease_s
        await self._lose(
            [d for d in self.held if d not in renewed], "the database refused the renewal"
        )
        wanted = {k for k in self._keys() if owner(k, self.live) == me}
        give = sorted(d for d in self.held if d not in wanted)
        await self._hand_over(give)
        if give:
            async with asyncio.timeout(self._db_timeout_s), store.pool.connection() as conn:
                await leases.release(conn, me, give)
            self._log.info("handed leases over", leases=len(give))
        # At most take_per_round new devices a round: a member starting alone, or taking a
        # dead member's share, paces its TLS handshake storm instead of starving its own
        # event loop (and with it the renewals of the leases it already holds).
        take = sorted(wanted - set(self.held))[: self._take_per_round]
        if not take:
            return
        t1 = self._clock()
        async with asyncio.timeout(self._db_timeout_s), store.pool.connection() as conn:
            # Taking over from a member that stopped heartbeating: end what it left open first.
            # Frozen mid-commit, it holds row locks (lease rows FOR SHARE, its devices' cursor
            # rows) that would stall our own commits until it woke up.
            ended = await leases.end_stale_transactions(conn, self.lease_s)
            if ended:
                self._log.warning(
                    "ended the open transactions of members that are no longer live",
                    ended=ended,
                )
            try:
                got = await leases.acquire(conn, me, take, self.lease_s, self.lease_s / 4)
            except psycopg.errors.LockNotAvailable:
                # A member that stopped heartbeating holds a lease row locked in a transaction
                # it will never finish (frozen mid-commit): end it; take the leases next round.
                ended = await leases.end_stale_transactions(conn, self.lease_s)
                self._log.warning(
                    "a lease row was locked by a member that is no longer live; ended its "
                    "transactions",
                    ended=ended,
                )
                return
        for key, token in got.items():
            self.held[key] = token
            self._deadline[key] = t1 + self.lease_s
            self._since[key] = t1
            store.hold(room_of(key) or key, token)
            FLEET_OWNERSHIP_CHANGES.labels(change="acquired").inc()
        FLEET_DEVICES_OWNED.set(len(self.held))
        if got:
            self._log.info("took leases", leases=len(got), held=len(self.held))
            for key in sorted(got):
                room = room_of(key)
                if room is None:
                    self._start(key)
                if self._start_room is not None:
                    self._start_room(room or key)
            # The drainers learn what the previous owners left undelivered. Should this fail,
            # the first commit of each new session tells them too (a stream's top covers all
            # that is below it).
            try:
                async with asyncio.timeout(self._db_timeout_s):
                    await store.refresh_streams(sorted(room_of(k) or k for k in got))
            except Exception as exc:  # noqa: BLE001 - late delivery, not loss
                self._log.warning("could not read the new devices' outbox tops", error=repr(exc))

    async def leave(self) -> None:
        """Stop every session, release every lease and leave the fleet (SIGTERM).

        The database calls are bounded by the lease: if it cannot be reached, the leases run
        out on their own.
        """
        self._leaving = True
        async with self._round_lock:  # a round in progress ends first (its calls are bounded)
            await self._hand_over(sorted(self.held))
        try:
            async with asyncio.timeout(self.lease_s):
                async with self.store.pool.connection() as conn:
                    await leases.leave(conn, self.member_id)
        except Exception as exc:  # noqa: BLE001 - leaving best effort: leases run out
            self._log.warning(
                "could not release the leases; the other members take the devices when they "
                "run out",
                error=repr(exc),
            )
            return
        self._log.info("left the fleet; devices handed over")

    # -- losing and giving up -----------------------------------------------------------------

    async def check_deadlines(self) -> None:
        """Drop every device whose local lease deadline has passed (no database needed)."""
        now = self._clock()
        await self._lose(
            [d for d, t in self._deadline.items() if t <= now],
            "the lease could not be renewed in time",
        )

    async def _lose(self, devices: list[str], why: str) -> None:
        """The leases are gone: refuse the devices' commits at once, then close their sockets,
        all together (a member waking from a freeze may have lost every lease at once)."""
        if not devices:
            return
        for device in devices:
            self.store.release(room_of(device) or device)
            self._forget(device)
        FLEET_LEASE_LOSSES.inc(len(devices))
        FLEET_OWNERSHIP_CHANGES.labels(change="lost").inc(len(devices))
        FLEET_DEVICES_OWNED.set(len(self.held))
        self._log.warning(
            "lost leases; their sessions and room polling are stopped and other members take "
            "them",
            leases=devices if len(devices) <= 10 else len(devices),
            reason=why,
        )
        await asyncio.gather(*self._stops(devices, True), return_exceptions=True)

    async def _hand_over(self, devices: list[str]) -> None:
        """Give ``devices`` up on purpose: stop their sessions (their last commits still carry
        the token), then stop committing for them; the caller releases the lease rows."""
        if not devices:
            return
        await asyncio.gather(*self._stops(devices, False), return_exceptions=True)
        for device in devices:
            self.store.release(room_of(device) or device)
            self._forget(device)
        FLEET_OWNERSHIP_CHANGES.labels(change="released").inc(len(devices))
        FLEET_DEVICES_OWNED.set(len(self.held))

    def _stops(self, keys: list[str], lost: bool) -> list[Awaitable[None]]:
        """Stopping what each lease covers: a device's session and its linked room's polling,
        a calendar-only room's polling."""
        out: list[Awaitable[None]] = []
        for key in keys:
            room = room_of(key)
            if room is None:
                out.append(self._stop(key, lost))
            if self._stop_room is not None:
                out.append(self._stop_room(room or key, lost))
        return out

    def _forget(self, device: str) -> None:
        self.held.pop(device, None)
        self._deadline.pop(device, None)
        self._since.pop(device, None)


__all__ = ["FleetMember"]
