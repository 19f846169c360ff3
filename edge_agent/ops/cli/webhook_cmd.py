"""``edge-agent webhook test``: one signed ``agent.test`` event to the configured receiver.

Sent by the very sink the agent runs (:func:`edge_agent.agent.build_webhook_sink`: the same
URL, secrets, CA file, timeout and signing), not through the outbox: nothing is stored and
nothing is retried. Prints the receiver's answer (status and the start of its body) and what
the agent would make of it. The event is a real delivery: a receiver that stores what it gets
will store it; it can tell it apart by ``type`` (``agent.test``).

Exit status: 0 when the receiver accepted it (2xx), 1 otherwise, 78 for a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from datetime import UTC, datetime
from typing import Any

from edge_agent import jsoncodec
from edge_agent.config import EX_CONFIG, AgentConfig, Secrets
from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    err,
    load_config_or_exit,
    secrets_or_exit,
    setup_logging,
)

TEST_EVENT_TYPE = "agent.test"
TEST_DEVICE = "edge-agent"
"""The envelope's ``device_id``: the test comes from the agent itself, not from a room."""


def add_webhook_parser(sub: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhook", help="webhook tools (test)")
    webhook = p.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    p = webhook.add_parser(
        "test",
        parents=parents,
        help="send one signed test event (type agent.test) and print the receiver's answer",
    )
    p.set_defaults(func=cmd_webhook_test)


def test_envelope(site: str, now: datetime) -> dict[str, Any]:
    """The ``agent.test`` envelope: the event envelope's shape, with no booking."""
    from edge_agent.bookings.events import new_event_id
    from edge_agent.clock import utc_iso

    stamp = utc_iso(now)
    return {
        "type": TEST_EVENT_TYPE,
        "timestamp": stamp,
        "data": {
            "event_id": new_event_id(now),
            "site": site,
            "device_id": TEST_DEVICE,
            "observed_at": stamp,
            "host": socket.gethostname(),
            "message": "test event from `edge-agent webhook test`; safe to ignore",
        },
    }


def cmd_webhook_test(args: argparse.Namespace) -> int:
    setup_logging(args)
    cfg = load_config_or_exit(args.config, require_sink=False)
    setup_logging(args, cfg)
    if cfg.webhook is None:
        err(f"edge-agent: {args.config} has no [webhook] section: nothing to test")
        return EX_CONFIG
    secrets = secrets_or_exit(args.config, cfg)
    return asyncio.run(_send(cfg, secrets))


async def _send(cfg: AgentConfig, secrets: Secrets) -> int:
    from edge_agent.agent import build_webhook_sink
    from edge_agent.forward.base import Delivered, Gone, Reject, Retry
    from edge_agent.forward.schedule import OutboxEvent

    try:
        sink = build_webhook_sink(cfg, secrets)
    except (OSError, ValueError) as exc:  # an unreadable ca_file, a bad secret
        err(f"edge-agent: cannot set up the webhook sink: {exc}")
        return EX_CONFIG
    envelope = test_envelope(cfg.site, datetime.now(UTC))
    event = OutboxEvent(
        seq=0,
        device_id=TEST_DEVICE,
        event_id=envelope["data"]["event_id"],
        type=TEST_EVENT_TYPE,
        envelope=envelope,
        body=jsoncodec.dumpb(envelope),
        created_at=time.time(),
    )
    print(f"POST {sink.url}  type={TEST_EVENT_TYPE} webhook-id={event.event_id}")
    try:
        outcome = await sink.send([event])
    finally:
        await sink.close()
    answer = sink.last_answer
    if answer is not None:
        excerpt = answer.excerpt_text(200)
        print(f"answer: HTTP {answer.status}" + (f"  {excerpt}" if excerpt else "  (empty body)"))
    if isinstance(outcome, Delivered):
        print("ok: the receiver accepted the event; the agent would count it delivered")
        return EX_OK
    if isinstance(outcome, Retry):
        verdict = "the agent would retry it (receiver down, overloaded or unreachable)"
    elif isinstance(outcome, Reject):
        verdict = "the agent would dead-letter such events (check the secret and the URL)"
    elif isinstance(outcome, Gone):
        verdict = "the agent would stop the webhook sink for good (410 Gone)"
    else:  # pragma: no cover - Outcome is closed
        verdict = "unexpected outcome"
    print(f"FAILED: {outcome.reason}: {verdict}")
    return EX_FAIL
