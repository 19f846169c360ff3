"""The agent's calendar sources: the Graph and Google pollers, their clients and push.

With ``[microsoft]``, a :class:`GraphPoller` runs the Graph rooms (linked devices,
``[[rooms]]``, and the directory's when ``discover_rooms``) as the supervised task ``graph``;
its rounds commit through :class:`edge_agent.store.calendar.RoomCalendarStore` into the same
outbox the device sessions use, so the drainers forward them with the device events. With
``[google]``, a :class:`GooglePoller` does the same for the Google rooms as the task ``google``
(``RoomCalendarStore(source="google")``: its own sync state, ``data.source = "google"``).

One object owns both sources (clients, tokens, HTTP clients, push managers, tasks) so the
agent's lifecycle sees four calls (:meth:`CalendarSources.setup`, :meth:`~CalendarSources.start`,
:meth:`~CalendarSources.stop`, :meth:`~CalendarSources.close`), and booking a calendar room
(:mod:`edge_agent.agent.booking`) reads the running pollers and clients from here.

In a fleet (:meth:`CalendarSources.start` given the :class:`~edge_agent.fleet.FleetMember`)
each poller runs only the rooms this member holds (``owned``; :meth:`start_room` /
:meth:`stop_room` as leases come and go) and tells the member every room its directory has;
a push notification this member cannot match is relayed to the others
(:mod:`edge_agent.fleet.relay`).

The configuration is the one the agent started with: SIGHUP does not apply room changes (the
agent warns that a restart is needed), so the sections read here never change while it runs.
The secrets are read through a callable, since a reload replaces them and a client that could
not be built at the start is built again, by the restarted task, with the current ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from edge_agent.agent.build import (
    build_google_client,
    build_graph_client,
    google_rooms,
    graph_rooms,
    zone,
)
from edge_agent.clock import Clock
from edge_agent.config import AgentConfig, Secrets
from edge_agent.store import StoreBackend

if TYPE_CHECKING:
    import httpx

    from edge_agent.fleet import FleetMember
    from edge_agent.fleet.relay import PushRelay

    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.client import GoogleClient
    from edge_agent.calendars.google.poller import GooglePoller
    from edge_agent.calendars.google.push import WatchManager
    from edge_agent.calendars.graph.auth import ClientCredentials
    from edge_agent.calendars.graph.client import GraphClient
    from edge_agent.calendars.graph.poller import GraphPoller
    from edge_agent.calendars.graph.push import PushManager
    from edge_agent.session import DeviceSession

log = structlog.get_logger("edge_agent.agent")

Supervise = Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]
"""The agent's supervisor: run a task by name, restarting it when it fails."""


class CalendarSources:
    """The Graph and Google calendar sources of one agent run.

    Args:
        config: the configuration the agent started with (see the module docstring).
        secrets: the agent's current secrets (a reload replaces them).
        clock: the agent's clock.
        graph_overrides: extra :class:`GraphPoller` keyword arguments (tests, demo).
        google_overrides: extra :class:`GooglePoller` keyword arguments (tests, demo).
    """

    def __init__(
        self,
        config: AgentConfig,
        secrets: Callable[[], Secrets],
        *,
        clock: Clock,
        graph_overrides: Mapping[str, Any] | None = None,
        google_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._secrets = secrets
        self._clock = clock
        self._store: StoreBackend | None = None
        self.graph: GraphPoller | None = None
        self.graph_http: httpx.AsyncClient | None = None
        self.graph_tokens: ClientCredentials | None = None
        self._graph_client: GraphClient | None = None
        self._push: PushManager | None = None
        self._graph_task: asyncio.Task[None] | None = None
        self._graph_overrides = dict(graph_overrides or {})
        self.google: GooglePoller | None = None
        self.google_http: httpx.AsyncClient | None = None
        self._google_client: GoogleClient | None = None
        self._google_tokens: ServiceAccountTokens | None = None
        self._watch: WatchManager | None = None
        self._google_task: asyncio.Task[None] | None = None
        self._google_overrides = dict(google_overrides or {})
        self._member: FleetMember | None = None  # fleet mode: polling follows the leases
        self.relay: PushRelay | None = None  # fleet mode: pushes for the others' rooms
        self.rooms_changed = asyncio.Event()
        """Set when a poller's room set changed (the MQTT sink is told: Agent._rooms_clock)."""

    # --- lifecycle -----------------------------------------------------------------------------

    def setup(self, store: StoreBackend | None = None) -> tuple[list[Any], tuple[str, ...]]:
        """Build the clients (and push managers) before the local API starts; the local API's
        notification routes and the paths that authenticate themselves (Graph's clientState,
        Google's channel token), for the API guard. ``store``: the open store (in a fleet,
        push notifications for the other members' rooms are relayed through it)."""
        if self.config.store.url is not None and self._pushes():
            from edge_agent.agent.fleet import member_id
            from edge_agent.fleet.relay import PushRelay
            from edge_agent.store.postgres import PostgresStore

            if isinstance(store, PostgresStore):
                self.relay = PushRelay(store, member_id(self.config))
        routes, open_paths = self._graph_setup()  # the Graph notification routes, with push
        g_routes, g_paths = self._google_setup()  # the Google one, with [google] push
        return [*routes, *g_routes], (*open_paths, *g_paths)

    def _pushes(self) -> bool:
        """Whether a source is configured with push (``notification_url``)."""
        ms, g = self.config.microsoft, self.config.google
        return bool((ms and ms.notification_url) or (g and g.notification_url))

    def start(
        self,
        tg: asyncio.TaskGroup,
        store: StoreBackend,
        supervise: Supervise,
        member: FleetMember | None = None,
    ) -> None:
        """Start the supervised tasks ``graph`` and ``google`` (the configured ones); in a
        fleet (``member``) also ``fleet-push-relay`` when a source has push."""
        self._store = store
        self._member = member
        if self.relay is not None and member is not None:
            relay = self.relay
            tg.create_task(supervise("fleet-push-relay", relay.run), name="fleet-push-relay")
        if self.config.microsoft is not None:
            self._graph_task = tg.create_task(supervise("graph", self._run_graph), name="graph")
        if self.config.google is not None:
            self._google_task = tg.create_task(supervise("google", self._run_google), name="google")

    async def stop(self) -> None:
        """End the calendar rounds (at shutdown, with the sessions: before the drain). A round
        cut mid-commit is either stored whole or not at all (one transaction)."""
        for task in (self._graph_task, self._google_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        """Close the HTTP clients (at the very end of a run)."""
        for http in (self.graph_http, self.google_http):
            if http is not None:
                with contextlib.suppress(Exception):
                    await http.aclose()

    # --- fleet: rooms by lease ------------------------------------------------------------------

    def start_room(self, room_id: str) -> None:
        """This member holds ``room_id`` now (its lease, or its linked device's): the pollers
        run it (each ignores an id it has no room for)."""
        for poller in (self.graph, self.google):
            if poller is not None:
                poller.start_room(room_id)

    async def stop_room(self, room_id: str, lost: bool) -> None:
        """This member gave ``room_id`` up or lost it: stop polling it (and its push) now."""
        for poller in (self.graph, self.google):
            if poller is not None:
                await poller.stop_room(room_id)

    def _fleet_options(self, source: str) -> dict[str, Any]:
        """A poller's ownership options in a fleet: the rooms held now (a restarted poller
        starts with them), and the directory reported to the member (calendar-only rooms:
        a linked room goes with its device's lease)."""
        member = self._member
        if member is None:
            return {}

        def on_directory(rooms: Mapping[str, Any]) -> None:
            member.set_rooms(source, [rid for rid, r in rooms.items() if r.device_id is None])
            self.rooms_changed.set()  # the MQTT sink announces the whole directory

        return {"owned": member.rooms_held(), "on_directory": on_directory}

    def _mine(self, room_id: str) -> bool:
        return self._member is None or self._member.holds_room(room_id)

    # --- Graph ---------------------------------------------------------------------------------

    def _graph_setup(self) -> tuple[list[Any], tuple[str, ...]]:
        """The Graph client and, with ``notification_url``, the push manager and the local
        API's notification routes. A credential that cannot be built (an unreadable
        certificate) is logged; the ``graph`` task retries it."""
        ms = self.config.microsoft
        if ms is None:
            return [], ()
        try:
            self._graph_client, self.graph_tokens, self.graph_http = build_graph_client(
                self.config, self._secrets()
            )
        except (OSError, ValueError) as exc:
            log.error("cannot build the Graph client; retrying", error=str(exc))
            return [], ()
        if not ms.notification_url:
            return [], ()
        from edge_agent.calendars.graph.push import LIFECYCLE_PATH, NOTIFY_PATH, PushManager
        from edge_agent.calendars.notify import GraphNotifications

        self._push = PushManager(
            self.graph_http,
            self.graph_tokens,
            notification_url=ms.notification_url,
            poke=self.poke_graph,
            graph_url=ms.graph_url,
            clock=self._clock,
        )
        target: Any = self._push
        if self.relay is not None:
            from edge_agent.fleet.relay import RelayedGraphTarget

            target = RelayedGraphTarget(self._push, self.relay, self.poke_graph)
        notify = GraphNotifications(target, self.poke_graph)
        return notify.routes(), (NOTIFY_PATH, LIFECYCLE_PATH)

    def poke_graph(self, room_id: str) -> bool:
        """A Graph notification for ``room_id``: fetch its delta now (the poller of this run)."""
        return self.graph.poke(room_id) if self.graph is not None else False

    async def _run_graph(self) -> None:
        """One poller per run: a restart by the supervisor starts from the stored state. With
        push, the subscriptions (task ``graph-push``) follow the poller's rooms and stretch
        their polling while healthy; they are deleted when the task ends."""
        from edge_agent.calendars.graph.poller import GraphPoller
        from edge_agent.store.calendar import RoomCalendarStore

        assert self._store is not None
        cfg = self.config
        ms = cfg.microsoft
        assert ms is not None
        if self._graph_client is None:
            self._graph_client, self.graph_tokens, self.graph_http = build_graph_client(
                cfg, self._secrets()
            )
        store = RoomCalendarStore(self._store, site=cfg.site, source="microsoft")
        push = self._push
        opts = self._poller_options(
            ms,
            graph_rooms(cfg),
            # A device without a calendar is a room under its id: the directory cannot take it.
            [d.id for d in cfg.devices if d.calendar is None],
            self._graph_overrides,
            push,
        )
        opts.update(self._fleet_options("microsoft"))
        self.graph = GraphPoller(self._graph_client, store, **opts)
        log.info(
            "graph calendar source starting",
            rooms_configured=len(opts["rooms"]),
            discover=ms.discover_rooms,
            graph_url=ms.graph_url,
            push=push.notification_url if push is not None else None,
        )
        await _run_with_push(self.graph.run, push, "graph")

    @property
    def google_client(self) -> GoogleClient | None:
        """The Google client once built (its limiter is the subject's request quota)."""
        return self._google_client

    # --- Google --------------------------------------------------------------------------------

    def _google_setup(self) -> tuple[list[Any], tuple[str, ...]]:
        """The Google client and, with ``notification_url``, the watch channels and the local
        API's notification route (its messages are checked by each channel's token)."""
        g = self.config.google
        if g is None:
            return [], ()
        try:
            self._google_client, self._google_tokens, self.google_http = build_google_client(
                self.config
            )
        except Exception as exc:  # noqa: BLE001 - AuthError/ValueError: the task retries it
            log.error("cannot build the Google client; retrying", error=str(exc))
            return [], ()
        if not g.notification_url:
            return [], ()
        from edge_agent.calendars.google.push import NOTIFY_PATH, WatchManager

        self._watch = WatchManager(
            self.google_http,
            self._google_tokens,
            calendar_url=g.calendar_url,
            notification_url=g.notification_url,
            poke=self.poke_google,
            clock=self._clock,
            limiter=self._google_client.limiter,  # one per-user quota for polls and channels
            subject=g.subject,
        )
        if self.relay is not None:
            from edge_agent.fleet.relay import relayed_google_routes

            return relayed_google_routes(self._watch, self.relay, NOTIFY_PATH), (NOTIFY_PATH,)
        return self._watch.routes(), (NOTIFY_PATH,)

    def poke_google(self, room_id: str) -> bool:
        """A Google notification for ``room_id``: fetch its changes now."""
        return self.google.poke(room_id) if self.google is not None else False

    async def _run_google(self) -> None:
        """One poller per run, as for Graph: a restart by the supervisor starts from the stored
        sync tokens. The client is built once (its token cache outlives a poller restart)."""
        from edge_agent.calendars.google.poller import GooglePoller
        from edge_agent.store.calendar import RoomCalendarStore

        assert self._store is not None
        cfg = self.config
        g = cfg.google
        assert g is not None
        if self._google_client is None:
            self._google_client, _, self.google_http = build_google_client(cfg)
        store = RoomCalendarStore(self._store, site=cfg.site, source="google")
        watch = self._watch
        opts = self._poller_options(
            g,
            google_rooms(cfg),
            # Ids taken elsewhere: devices without a calendar, and the Graph rooms.
            [d.id for d in cfg.devices if d.calendar is None]
            + ([r.room_id for r in graph_rooms(cfg)] if cfg.microsoft is not None else []),
            self._google_overrides,
            watch,
        )
        opts.update(self._fleet_options("google"))
        self.google = GooglePoller(self._google_client, store, **opts)
        log.info(
            "google calendar source starting",
            rooms_configured=len(opts["rooms"]),
            discover=g.discover_rooms,
            calendar_url=g.calendar_url,
            subject=g.subject,
            push=watch.address if watch is not None else None,
        )
        await _run_with_push(self.google.run, watch, "google")

    # --- both ----------------------------------------------------------------------------------

    def poke(self, source: str, room_id: str) -> bool:
        """Fetch ``room_id``'s changes now, from the poller of its source."""
        if source == "google":
            return self.poke_google(room_id)
        return self.poke_graph(room_id)

    def _poller_options(
        self,
        section: Any,
        rooms: list[Any],
        reserved_ids: list[str],
        overrides: Mapping[str, Any],
        push: Any,
    ) -> dict[str, Any]:
        """A calendar poller's options from its config section (``[microsoft]`` or ``[google]``,
        the same keys); with push, polling follows its rooms and stretches while it is healthy."""
        opts: dict[str, Any] = {
            "rooms": rooms,
            "discover": section.discover_rooms,
            "default_zone": zone(section.time_zone or self.config.defaults.time_zone, "UTC"),
            "poll_interval_s": section.poll_interval_s,
            "refresh_rooms_s": section.refresh_rooms_s,
            "horizon_days": section.horizon_days,
            "clock": self._clock,
            "reserved_ids": reserved_ids,
            **overrides,
        }

        def on_rooms(found: Mapping[str, Any]) -> None:
            self.rooms_changed.set()
            if push is not None:
                push.set_rooms({rid: r.mailbox for rid, r in found.items()})

        opts["on_rooms"] = on_rooms
        if push is not None:
            opts["interval_for"] = push.poll_interval_s
        return opts

    def rooms_known(self) -> bool:
        """Whether every configured calendar source runs its room set (after its first
        directory read): only then is the list of calendar-only rooms complete."""
        pollers = [p for p in (self.graph, self.google) if p is not None]
        sources = (self.config.microsoft is not None) + (self.config.google is not None)
        return len(pollers) == sources and all(p.rooms_ready.is_set() for p in pollers)

    def calendar_only_rooms(self) -> dict[str, str]:
        """Every calendar-only room the sources' directories have, ``{room_id: source}`` (what
        the MQTT sink announces). In a fleet also those other members poll: every member
        announces the same set, as it does the configured devices, so none clears the retained
        topics of a room another member holds."""
        out: dict[str, str] = {}
        for source, poller in (("microsoft", self.graph), ("google", self.google)):
            if poller is not None:
                found = poller.rooms()
                out.update({rid: source for rid, r in found.items() if r.device_id is None})
        return out

    def rooms(self, out: dict[str, dict[str, Any]], sessions: Mapping[str, DeviceSession]) -> None:
        """Add the calendar rooms to ``out`` (``/v1/rooms``, ``edge-agent status``): the
        pollers' (with their push state, and a linked device's connection), else (a poller not
        running yet) the configured ones."""
        self._poller_rooms(out, sessions, "microsoft", self.graph, self._push)
        self._poller_rooms(out, sessions, "google", self.google, self._watch)
        # In a fleet, only the configured rooms this member holds (the others are another's).
        if self.config.google is not None:
            mine = [r for r in google_rooms(self.config) if self._mine(r.room_id)]
            _configured_rooms(out, "google", mine)
        if self.config.microsoft is not None:
            mine = [r for r in graph_rooms(self.config) if self._mine(r.room_id)]
            _configured_rooms(out, "microsoft", mine)

    @staticmethod
    def _poller_rooms(
        out: dict[str, dict[str, Any]],
        sessions: Mapping[str, DeviceSession],
        source: str,
        poller: GraphPoller | GooglePoller | None,
        push: PushManager | WatchManager | None,
    ) -> None:
        status = poller.status() if poller is not None else {}
        for rid, st in status.items():
            room = st.room
            out[rid] = {
                "id": rid,
                "source": source,
                "device_id": room.device_id,
                "calendar": room.mailbox,
                "display_name": room.display_name,
                "discovered": room.discovered,
                "time_zone": str(room.time_zone),
                "last_sync": st.last_sync,
                "last_error": st.last_error,
                "window_size": st.window_size,
                "rounds": st.rounds,
            }
            if push is not None:
                out[rid].update(push.status(rid))
            linked = sessions.get(room.device_id) if room.device_id else None
            if linked is not None:
                out[rid]["connected"] = linked.client.connected


def _configured_rooms(out: dict[str, dict[str, Any]], source: str, rooms: list[Any]) -> None:
    """The configured rooms a poller does not report (yet: it is starting)."""
    for room in rooms:
        out.setdefault(
            room.room_id,
            {
                "id": room.room_id,
                "source": source,
                "device_id": room.device_id,
                "calendar": room.mailbox,
                "last_sync": None,
                "last_error": None,
                "window_size": 0,
            },
        )


async def _run_with_push(
    run: Callable[[], Coroutine[Any, Any, None]], push: Any, source: str
) -> None:
    """Run a calendar poller, with its push manager beside it when there is one; the push is
    stopped (bounded, shielded) when the run ends: Graph's subscriptions are deleted, Google's
    channels stopped, since their secrets die with this run."""
    if push is None:
        await run()
        return
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run(), name=f"{source}-poller")
            tg.create_task(push.run(), name=f"{source}-push")
    finally:
        await asyncio.shield(push.stop())
