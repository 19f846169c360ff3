"""The link's counters, and how the agent carries them into its metrics (the xapi layer does
not import ``edge_agent.metrics``)."""

from __future__ import annotations

import ast
from pathlib import Path

from edge_agent import metrics
from edge_agent.xapi import LinkCounters


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_export_adds_what_grew_since_the_last_sample() -> None:
    export = metrics.LinkCountersExport()
    c = LinkCounters()
    base_r = sample("edge_agent_device_reconnects_total", device="room-x1")
    base_auth = sample("edge_agent_device_errors_total", device="room-x1", kind="auth")
    c.reconnects = 3
    c.error("auth")
    export.export("room-x1", c)
    export.export("room-x1", c)  # nothing new: nothing added
    assert sample("edge_agent_device_reconnects_total", device="room-x1") == base_r + 3
    assert sample("edge_agent_device_errors_total", device="room-x1", kind="auth") == base_auth + 1
    c.reconnects = 5
    c.error("auth")
    c.error("auth")
    export.export("room-x1", c)
    assert sample("edge_agent_device_reconnects_total", device="room-x1") == base_r + 5
    assert sample("edge_agent_device_errors_total", device="room-x1", kind="auth") == base_auth + 3


def test_a_new_client_starts_from_zero_without_losing_counts() -> None:
    export = metrics.LinkCountersExport()
    base = sample("edge_agent_device_reconnects_total", device="room-x2")
    old = LinkCounters(reconnects=4)
    export.export("room-x2", old)
    new = LinkCounters(reconnects=1)  # the session made a fresh client
    export.export("room-x2", new)
    assert sample("edge_agent_device_reconnects_total", device="room-x2") == base + 5
    export.forget("room-x2")
    export.export("room-x2", new)  # forgotten: counted from zero again
    assert sample("edge_agent_device_reconnects_total", device="room-x2") == base + 6


def test_the_xapi_layer_does_not_import_the_agents_metrics() -> None:
    package = Path(__file__).resolve().parents[2] / "edge_agent" / "xapi"
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("edge_agent.metrics") for n in names), path.name
