"""The agent's store and, in fleet mode, its devices by lease (DESIGN.md "Fleet mode").

Alone (``[store]`` without ``url``) the store is SQLite and the agent runs every configured
device. With ``[store] url`` (PostgreSQL) the agent is one member of a fleet: a
:class:`~edge_agent.fleet.FleetMember` takes the leases this member wins and
:class:`LeasedDevices` starts and stops the device sessions as it does, and the calendar
rooms' polling (:mod:`.calendars`: ``start_room`` / ``stop_room``) for the calendar-only rooms
and linked rooms it holds. Apart from the agent's lifecycle because it is the one place that
knows the difference between the two.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from edge_agent.clock import Clock, unix_time
from edge_agent.config import AgentConfig, DeviceSettings, Secrets
from edge_agent.store import Store, StoreBackend

if TYPE_CHECKING:
    from edge_agent.fleet import FleetMember
    from edge_agent.store.postgres import PostgresStore


def member_id(cfg: AgentConfig) -> str:
    """This member's name in the fleet: ``[fleet] member_id``, else the host name."""
    return cfg.fleet.member_id or socket.gethostname()


async def open_store(cfg: AgentConfig, secrets: Secrets, clock: Clock) -> StoreBackend:
    """SQLite by default; PostgreSQL (and fleet membership) when ``[store] url`` is set."""
    sinks = tuple(cfg.sink_names()) or ("webhook",)
    if cfg.store.url is None:
        return await Store.open(
            cfg.store_path,
            sinks=sinks,
            outbox_max_events=cfg.store.outbox_max_events,
            synchronous=cfg.store.synchronous,
            clock=unix_time(clock),
        )
    from edge_agent.store.postgres import PostgresStore

    password = secrets.store_password
    return await PostgresStore.open(
        cfg.store.url,
        password=None if password is None else password.get_secret_value(),
        sslmode=cfg.store.sslmode,
        ca_file=cfg.store.ca_file,
        sinks=sinks,
        outbox_max_events=cfg.store.outbox_max_events,
        member_id=member_id(cfg),
        idle_in_transaction_s=max(1.0, cfg.fleet.lease_s / 3),
        lock_timeout_s=cfg.fleet.lease_s,
        clock=unix_time(clock),
    )


class LeasedDevices:
    """The device sessions of a fleet member: a session runs while this member holds the
    device's lease. :attr:`member` is the membership (run it; ``leave`` it at SIGTERM).

    Args:
        store: the open PostgreSQL store.
        cfg: the configuration (``[fleet]``, the site and the API address for ``/v1/fleet``).
        settings: the agent's current device settings, by id (a reload replaces them).
        running: whether a device's session runs.
        start_device: start a device's session.
        stop_device: stop it: the device id, the reason, and how long to wait for what it
            already sent to be committed (``None``: the agent's drain timeout).
        start_room: the calendar pollers may run this room (a calendar-only room's lease, or
            a device's: its linked room), :meth:`CalendarSources.start_room`.
        stop_room: stop polling it (handover or loss), :meth:`CalendarSources.stop_room`.
    """

    def __init__(
        self,
        store: PostgresStore,
        cfg: AgentConfig,
        *,
        settings: Callable[[], Mapping[str, DeviceSettings]],
        running: Callable[[str], bool],
        start_device: Callable[[DeviceSettings], None],
        stop_device: Callable[[str, str, float | None], Awaitable[None]],
        start_room: Callable[[str], None] | None = None,
        stop_room: Callable[[str, bool], Awaitable[None]] | None = None,
    ) -> None:
        from edge_agent.fleet import FleetMember

        self._settings = settings
        self._running = running
        self._start_device = start_device
        self._stop_device = stop_device
        self.member: FleetMember = FleetMember(
            store,
            member_id=member_id(cfg),
            lease_s=cfg.fleet.lease_s,
            devices=list(settings()),
            start_session=self._start_leased,
            stop_session=self._stop_leased,
            start_room=start_room,
            stop_room=stop_room,
            info={"site": cfg.site, "api": cfg.api.listen},
        )

    def holds(self, device_id: str) -> bool:
        """Whether this member holds the device's lease (after a reload: a new device is taken
        by whichever member wins it, at its next round)."""
        return device_id in self.member.held

    def _start_leased(self, device_id: str) -> None:
        settings = self._settings().get(device_id)
        if settings is not None and not self._running(device_id):
            self._start_device(settings)

    async def _stop_leased(self, device_id: str, lost: bool) -> None:
        if not lost:
            await self._stop_device(device_id, "handed over to another fleet member", None)
            return
        # The lease is gone: whatever the session still holds cannot be committed (the store
        # refuses it); close the socket now rather than wait for commits that cannot happen.
        await self._stop_device(device_id, "fleet lease lost", 0.0)
