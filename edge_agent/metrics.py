"""Every Prometheus metric the agent exports, in one place (served at ``/metrics``).

Modules import the metric objects from here and update them; nobody else defines metrics.
Gauges that are cheaper to read than to maintain (outbox depth, oldest undelivered age,
pending requests, dead letters) are set by the agent's periodic sampler.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
