"""A delivered webhook leaves no reference cycle behind (docs/perf-notes.md, sixth session).

The agent's young GC generation is 20,000 allocations (edge_agent/ops/gctune.py): whatever the
hot path leaves in cycles waits for a young collection and is freed in one pause of the loop.
Each answer through httpx's streaming API used to be such a cycle (~35 objects: the response,
its stream wrapper, request, headers, aiohttp's response): a webhook agent collected ~20,000 of
them every few seconds in 20-65 ms pauses, the p99 of device -> receiver.
"""

from __future__ import annotations

import gc
from collections import Counter

import httpx
from aiohttp import ClientResponse

from edge_agent import jsoncodec
from edge_agent.forward.base import Delivered, OutboxEvent
from edge_agent.forward.webhook import WebhookSink
from tests.forward.test_drainer import SECRET, env
from tests.receivers import Reply, WebhookReceiver


def one(device: str, n: int) -> list[OutboxEvent]:
    e = env(device, n)
    return [OutboxEvent(n + 1, device, e["data"]["event_id"], e["type"], None,
                        jsoncodec.dumpb(e), 0.0)]  # fmt: skip


async def test_a_delivered_batch_leaves_no_cyclic_garbage() -> None:
    async with WebhookReceiver(SECRET) as rx:
        sink = WebhookSink(rx.url, [SECRET], batch_max=20)
        try:
            for n in range(5):  # the connection, the client's caches
                assert isinstance(await sink.send(one("room-1", n)), Delivered)
            rx.responder = lambda d: Reply(200) if rx.requests % 2 else Reply(503)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for n in range(5, 105):  # answered 200 and 503 in turn
                    await sink.send(one("room-1", n))
                gc.collect()
                kinds = Counter(type(o).__qualname__ for o in gc.garbage)
                answers = [o for o in gc.garbage if isinstance(o, (httpx.Response, ClientResponse))]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert answers == [], kinds.most_common(10)
        finally:
            await sink.close()
