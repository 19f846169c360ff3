"""Every Prometheus metric the agent exports, in one place (served at ``/metrics``).

Modules import the metric objects from here and update them; nobody else defines metrics.
Gauges that are cheaper to read than to maintain (outbox depth, oldest undelivered age,
pending requests, dead letters) are set by the agent's periodic sampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from edge_agent.xapi.client import LinkCounters

REGISTRY = CollectorRegistry(auto_describe=True)

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
    "Connection and protocol errors by kind (auth, tls, refused, rate_limited, malformed...)",
    ["kind"],
    registry=REGISTRY,
)
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


class LinkCountersExport:
    """Carries each device link's counters (``XapiClient.counters``, which the xapi layer keeps
    without knowing about metrics) into ``RECONNECTS`` and ``DEVICE_ERRORS``: every sample adds
    what they grew by since the previous one. A device's new client (one per session run)
    starts again from zero, which shows as a different counters object."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[LinkCounters, int, dict[str, int]]] = {}

    def export(self, device_id: str, counters: LinkCounters) -> None:
        seen = self._seen.get(device_id)
        reconnects, errors = (seen[1], seen[2]) if seen and seen[0] is counters else (0, {})
        if counters.reconnects > reconnects:
            RECONNECTS.labels(device_id).inc(counters.reconnects - reconnects)
        for kind, n in counters.errors.items():
            if n > errors.get(kind, 0):
                DEVICE_ERRORS.labels(kind).inc(n - errors.get(kind, 0))
        self._seen[device_id] = (counters, counters.reconnects, dict(counters.errors))

    def forget(self, device_id: str) -> None:
        self._seen.pop(device_id, None)


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
