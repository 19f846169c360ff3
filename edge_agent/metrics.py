"""Every Prometheus metric the agent exports, in one place (served at ``/metrics``).

Modules import the metric objects from here and update them; nobody else defines metrics.
Gauges that are cheaper to read than to maintain (outbox depth, oldest undelivered age,
pending requests, dead letters) are set by the agent's periodic sampler.

No ``*_created`` series: they double the series count of every counter and histogram (300
rooms x error kinds) and no dashboard or alert here reads them. ``disable_created_metrics`` is
process-wide in prometheus_client (>= 0.17); the agent exports only this registry.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent import __version__

if TYPE_CHECKING:
    from edge_agent.xapi.client import LinkCounters

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream (0.26)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, _resident_memory_bytes, fds
PlatformCollector(registry=REGISTRY)  # python_info

BUILD_INFO = Gauge(
    "edge_agent_build_info",
    "Always 1; the labels say which agent and Python run",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)

DEVICES_CONFIGURED = Gauge(
    "edge_agent_devices_configured", "Devices in the configuration", registry=REGISTRY
)
DEVICES_CONNECTED = Gauge(
    "edge_agent_devices_connected", "Devices with a live xAPI session", registry=REGISTRY
)
RECONNECTS = Counter(
    "edge_agent_device_reconnects", "xAPI reconnect attempts", ["device"], registry=REGISTRY
)
DEVICE_ERRORS = Counter(
    "edge_agent_device_errors",
    "Connection and protocol errors by device and kind (auth, tls, unreachable, lost,"
    " malformed...); sum by (kind) for the fleet",
    ["device", "kind"],
    registry=REGISTRY,
)


class _LinkGauges(Collector):
    """``edge_agent_device_up`` and ``edge_agent_device_last_seen_seconds``, read at scrape time
    from the :class:`LinkCountersExport` samples. Labelled gauges would keep a child per device
    (the child, its value and its lock: ~1.3 KiB a device, two per device); the exposition is
    the same: one series per device, as of the last sample."""

    UP_HELP = "1 while the device's xAPI WebSocket is open (as of the last sample, every 5 s)"
    SEEN_HELP = "Unix time of the device's last frame or connect (to within the 5 s sample)"

    def __init__(self) -> None:
        # The LinkTimes each device was last sampled into (by whichever export: the last sample
        # wins, as a gauge's last set did).
        self.latest: dict[str, LinkTimes] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(dict(self.latest))

    def _families(self, times: Mapping[str, LinkTimes]) -> list[Metric]:
        up = GaugeMetricFamily("edge_agent_device_up", self.UP_HELP, labels=["device"])
        seen = GaugeMetricFamily(
            "edge_agent_device_last_seen_seconds", self.SEEN_HELP, labels=["device"]
        )
        for device_id, t in times.items():
            up.add_metric([device_id], 1.0 if t.connected else 0.0)
            if t.last_seen is not None:
                seen.add_metric([device_id], float(t.last_seen))
        return [up, seen]


LINK_GAUGES = _LinkGauges()
REGISTRY.register(LINK_GAUGES)
EVENTS = Counter(
    "edge_agent_events",
    "Events committed to the outbox, by envelope type",
    ["type"],
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge(
    "edge_agent_outbox_depth", "Events not yet delivered, by sink", ["sink"], registry=REGISTRY
)
OUTBOX_OLDEST_AGE = Gauge(
    "edge_agent_outbox_oldest_undelivered_seconds",
    "Age of the oldest undelivered event, by sink",
    ["sink"],
    registry=REGISTRY,
)
OUTBOX_DROPPED = Counter(
    "edge_agent_outbox_overflow",
    "Events moved to the dead letter because the outbox was full",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "edge_agent_deliveries",
    "Delivery attempts by sink and result (ok, retry, dead_letter, gone)",
    ["sink", "result"],
    registry=REGISTRY,
)
SINK_READY = Gauge(
    "edge_agent_sink_ready",
    "1 while the sink can deliver (broker connected; webhook not stopped by a 410)",
    ["sink"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "edge_agent_delivery_latency_seconds",
    "Time from an event being observed to its delivery being acknowledged",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
PENDING_REQUESTS = Gauge(
    "edge_agent_pending_requests", "Booking requests awaiting a meeting ID", registry=REGISTRY
)
DEAD_LETTERS = Gauge("edge_agent_dead_letters", "Events in the dead letter", registry=REGISTRY)
DEAD_LETTER_DROPPED = Counter(
    "edge_agent_dead_letter_dropped",
    "Oldest dead letters deleted because the dead letter was full (dead_letter_max)",
    registry=REGISTRY,
)

FEEDBACK_DROPPED = Counter(
    "edge_agent_feedback_dropped",
    "Device feedback a session dropped, by reason: duplicate (identical to one that arrived"
    " < 5 s before it), queue_full (the session's inbox was full; a re-list catches up)",
    ["device", "reason"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "edge_agent_store_errors",
    "Store writes that failed, by kind (full, io, corrupt, readonly, conflict, other)",
    ["kind"],
    registry=REGISTRY,
)
STORE_HEALTHY = Gauge(
    "edge_agent_store_healthy",
    "1 while store writes get in; 0 once they keep failing (the agent is not ready then)",
    registry=REGISTRY,
)


@dataclass(slots=True)
class LinkTimes:
    """When a device's link last changed, as the samples saw it (unix seconds; ``None``: not
    yet). The local API shows them (``connected_since`` / ``down_since``, ``last_seen``,
    ``last_error_at``); a sample every 5 s is precise enough for a person and for alerts."""

    connected: bool = False
    since: float | None = None
    """When ``connected`` last changed (or the first sample: the agent's start)."""
    last_seen: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    frames: int = 0
    connects: int = 0
    errors: int = 0


class LinkCountersExport:
    """Carries each device link's counters (``XapiClient.counters``, which the xapi layer keeps
    without knowing about metrics) into ``RECONNECTS`` and ``DEVICE_ERRORS`` (every sample adds
    what they grew by since the previous one), and its state into ``edge_agent_device_up`` and
    ``edge_agent_device_last_seen_seconds`` (:data:`LINK_GAUGES` reads the samples at scrape
    time). A device's
    new client (one per session run) starts again from zero, which shows as a different counters
    object. Pure bookkeeping: the caller passes the link's state and ``now``."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[LinkCounters, int, dict[str, int]]] = {}
        self._times: dict[str, LinkTimes] = {}
        self._kinds: dict[str, set[str]] = {}

    def export(
        self,
        device_id: str,
        counters: LinkCounters,
        *,
        connected: bool | None = None,
        last_error: str | None = None,
        now: float | None = None,
    ) -> None:
        """Add what ``counters`` grew by; with ``connected`` and ``now``, also the up gauge and
        the link's times (``last_error`` is the client's current one)."""
        seen = self._seen.get(device_id)
        same = seen is not None and seen[0] is counters
        reconnects, errors = (seen[1], seen[2]) if seen and same else (0, {})
        if counters.reconnects > reconnects:
            RECONNECTS.labels(device_id).inc(counters.reconnects - reconnects)
        for kind, n in counters.errors.items():
            if n > errors.get(kind, 0):
                DEVICE_ERRORS.labels(device_id, kind).inc(n - errors.get(kind, 0))
                self._kinds.setdefault(device_id, set()).add(kind)
        self._seen[device_id] = (counters, counters.reconnects, dict(counters.errors))
        if connected is not None and now is not None:
            self._observe(device_id, counters, same, connected, last_error, now)

    def _observe(
        self,
        device_id: str,
        counters: LinkCounters,
        same_client: bool,
        connected: bool,
        last_error: str | None,
        now: float,
    ) -> None:
        t = self._times.get(device_id)
        if t is None:
            t = self._times[device_id] = LinkTimes(connected=connected, since=now)
        elif t.connected != connected:
            t.connected, t.since = connected, now
        frames, connects, errors = (t.frames, t.connects, t.errors) if same_client else (0, 0, 0)
        if counters.frames > frames or counters.connects > connects or connected:
            # An open link is proof of life too: the liveness ping closes it when it dies.
            t.last_seen = now
        n_errors = sum(counters.errors.values())
        if last_error and (last_error != t.last_error or n_errors > errors):
            t.last_error_at = now
        t.frames, t.connects, t.errors = counters.frames, counters.connects, n_errors
        t.last_error = last_error
        LINK_GAUGES.latest[device_id] = t

    def times(self, device_id: str) -> LinkTimes | None:
        """The device's link times, or ``None`` before its first sample."""
        return self._times.get(device_id)

    def forget(self, device_id: str) -> None:
        """The device left the configuration: drop its state and its metric series."""
        self._seen.pop(device_id, None)
        self._times.pop(device_id, None)
        LINK_GAUGES.latest.pop(device_id, None)  # its up and last-seen series
        for kind in self._kinds.pop(device_id, set()):
            try:
                DEVICE_ERRORS.remove(device_id, kind)
            except KeyError:
                pass


# -- fleet mode (edge_agent.fleet) ----------------------------------------------------------------

FLEET_OWNERSHIP_CHANGES = Counter(
    "edge_agent_fleet_ownership_changes",
    "Device leases this member took or gave up (acquired, released, lost)",
    ["change"],
    registry=REGISTRY,
)
FLEET_LEASE_LOSSES = Counter(
    "edge_agent_fleet_lease_losses",
    "Device leases lost without handing them over (renewal refused or not possible in time)",
    registry=REGISTRY,
)
FLEET_DEVICES_OWNED = Gauge(
    "edge_agent_fleet_devices_owned", "Devices whose lease this member holds", registry=REGISTRY
)
FLEET_MEMBERS_LIVE = Gauge(
    "edge_agent_fleet_members_live", "Fleet members with a fresh heartbeat", registry=REGISTRY
)
