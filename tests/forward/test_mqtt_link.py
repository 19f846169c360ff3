"""The MQTT link's batched writes and reads (forward/mqtt/link.py, issue 17).

Every publish of one loop turn goes out in one ``send()`` (the packets joined in paho's queue,
in order); paho reads PUBACKs from one buffered ``recv()``. The pure parts are tested on
paho-shaped queue entries and a socket pair; the rest against the real mosquitto: order at a
subscriber, a socket that fills up mid-write, a link lost with PUBACKs outstanding and the next
link, and the paho internals the link leans on (``Client._out_packet``, ``Client._sock``).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.forward.mqtt.link import (
    BrokerLinkLost,
    PubackGroup,
    _BufferedSocket,
    _coalesce,
    broker_settings,
    open_link,
)
from tests.forward.test_mqtt import until
from tests.mosquitto import Mosquitto, Subscriber


def packet(command: int, data: bytes, *, qos: int = 1, pos: int = 0) -> dict[str, Any]:
    return {
        "command": command,
        "mid": 1,
        "qos": qos,
        "pos": pos,
        "to_process": len(data) - pos,
        "packet": data,
        "info": None,
    }


# --- pure parts ----------------------------------------------------------------------------------


def test_queued_qos1_packets_are_joined_in_order() -> None:
    queue = deque([packet(0x30, b"A1"), packet(0x40, b"B22"), packet(0xC0, b"C")])
    assert _coalesce(queue) == 3
    [joined] = queue
    assert joined["packet"] == b"A1B22C"
    assert (joined["pos"], joined["to_process"]) == (0, 6)
    # What paho does after writing it: nothing (a QoS 1 PUBLISH waits for its PUBACK).
    assert (joined["command"] & 0xF0, joined["qos"]) == (0x30, 1)


def test_a_qos0_publish_and_a_disconnect_keep_their_own_entries() -> None:
    """paho marks a QoS 0 PUBLISH published once written and closes the socket after a
    DISCONNECT: both stay whole, and nothing after them moves ahead of them."""
    q0 = packet(0x30, b"Q0", qos=0)
    bye = packet(0xE0, b"\xe0\x00")
    queue = deque([packet(0x32, b"A"), packet(0x32, b"B"), q0, packet(0x32, b"C"), bye])
    assert _coalesce(queue) == 2
    assert [p["packet"] for p in queue] == [b"AB", b"Q0", b"C", b"\xe0\x00"]
    assert queue[1] is q0
    queue.popleft()
    queue.popleft()
    assert _coalesce(queue) == 1  # one packet: left as it was
    assert [p["packet"] for p in queue] == [b"C", b"\xe0\x00"]
    queue.popleft()
    assert _coalesce(queue) == 0
    assert queue[0] is bye


def test_a_partly_written_head_contributes_only_its_rest() -> None:
    queue = deque([packet(0x32, b"xxHEAD", pos=2), packet(0x32, b"NEXT")])
    assert _coalesce(queue) == 2
    assert queue[0]["packet"] == b"HEADNEXT"


def test_the_buffered_socket_serves_many_packets_from_one_recv() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        wrapped = _BufferedSocket(a)
        b.sendall(b"\x40\x02\x00\x01" * 3)
        assert wrapped.recv(1) == b"\x40"
        assert wrapped.pending() == 11  # read off the socket, not yet taken: the selector
        assert wrapped.recv(1) == b"\x02"  # would not say so
        assert wrapped.recv(2) == b"\x00\x01"
        assert wrapped.recv(100) == b"\x40\x02\x00\x01" * 2  # never more than it holds
        assert wrapped.pending() == 0
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)  # nothing left: paho's "try again later"
        assert wrapped.fileno() == a.fileno()  # the rest is the socket's
        b.close()
        assert wrapped.recv(1) == b""  # end of stream: paho's connection lost
    finally:
        a.close()
        b.close()


OK = ReasonCode(PacketTypes.PUBACK, "Success")
REFUSED = ReasonCode(PacketTypes.PUBACK, "Not authorized")
QUOTA = ReasonCode(PacketTypes.PUBACK, "Quota exceeded")


def group_of(n: int, window: int = 10) -> tuple[PubackGroup, asyncio.Semaphore]:
    slots = asyncio.Semaphore(window)
    group = PubackGroup(asyncio.get_running_loop(), slots)
    for _ in range(n):
        assert not slots.locked()
        slots._value -= 1  # what publish_in's acquire does
        group.sent += 1
        group.left += 1
    return group, slots


async def test_a_group_is_done_when_every_puback_is_in_and_frees_each_slot() -> None:
    group, slots = group_of(3, window=3)
    assert slots.locked()
    group._acked(1, OK)  # PUBACKs may come before the batch is finished
    group._acked(0, OK)
    assert not group.done.done() and slots._value == 2
    done = group.finish()
    assert not done.done()
    group._acked(2, OK)
    assert done.done() and done.result() is None and group.failure is None
    assert slots._value == 3
    group.abandon()  # after success: nothing more to free
    assert slots._value == 3


async def test_a_group_names_the_first_refusal_in_publish_order() -> None:
    group, _ = group_of(3)
    group.finish()
    group._acked(2, QUOTA)
    group._acked(1, REFUSED)
    group._acked(0, OK)
    assert group.done.done() and group.failure == (1, REFUSED)


async def test_a_lost_link_fails_the_group_and_frees_its_slots_once() -> None:
    group, slots = group_of(4, window=4)
    group._acked(0, OK)
    group._lost("connection lost")
    assert slots._value == 4
    with pytest.raises(BrokerLinkLost):
        await group.finish()
    group._acked(1, OK)  # a PUBACK read after the loss: ignored, no slot freed twice
    group.abandon()
    assert slots._value == 4


async def test_an_abandoned_group_ignores_late_pubacks() -> None:
    group, slots = group_of(2, window=2)
    group.abandon()  # a timeout or a cancel: the slots are free again
    assert slots._value == 2 and group.done.cancelled()
    group._acked(0, OK)
    assert slots._value == 2


# --- against mosquitto -------------------------------------------------------------------------


@pytest.fixture(name="broker")
def plain_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as b:
        yield b


def settings(broker: Mosquitto, client_id: str = "link-test") -> Any:
    return broker_settings(broker.url, client_id=client_id, keepalive=5, connect_timeout_s=5)


async def test_one_loop_turn_of_publishes_is_one_send_and_keeps_its_order(
    broker: Mosquitto,
) -> None:
    with Subscriber(broker, "t/#") as sub:
        link = await open_link(settings(broker), max_in_flight=500)
        try:
            assert isinstance(link.client._sock, _BufferedSocket)  # the paho internal we use
            assert isinstance(link.client._out_packet, deque)  # and the other one
            before = link.sends
            acks = [link.publish("t/order", b"%d" % i, retain=False) for i in range(200)]
            reasons = await asyncio.wait_for(asyncio.gather(*acks), 10)
            assert all(not r.is_failure for r in reasons)
            assert link.sends - before == 1  # all 200 PUBLISHes in one send()
            await until(lambda: len(sub.on("t/order")) == 200, what="200 messages")
            assert sub.on("t/order") == [b"%d" % i for i in range(200)]
        finally:
            await link.close()


async def test_a_socket_that_fills_up_mid_write_sends_the_rest_in_order(
    broker: Mosquitto,
) -> None:
    """~24 MB in one loop turn: the kernel takes part of the joined packet, the link waits for
    the socket to drain (the loop's writer) and sends the rest, then stops watching for it."""
    payload = b"x" * 60_000
    with Subscriber(broker, "big/#") as sub:
        link = await open_link(settings(broker), max_in_flight=500)
        try:
            # A small send buffer forces the partial write: with the kernel's own (up to 4 MiB)
            # and the broker reading on another core, loopback took all 24 MB in one send().
            link.client._sock._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            acks = [link.publish("big/t", b"%04d" % i + payload, retain=False) for i in range(400)]
            await asyncio.wait_for(asyncio.gather(*acks), 60)
            assert link.sends > 2  # it did not all fit at once
            await until(lambda: len(sub.on("big/t")) == 400, timeout=30, what="400 messages")
            assert [p[:4] for p in sub.on("big/t")] == [b"%04d" % i for i in range(400)]
            assert not link.client.want_write()
            assert not link._writer_armed
            # and the next turn's publishes are flushed at the end of the turn again
            await asyncio.wait_for(link.publish("big/t", b"after", retain=False), 10)
        finally:
            await link.close()


async def test_pubacks_outstanding_when_the_link_drops_fail_and_the_next_link_works(
    broker: Mosquitto,
) -> None:
    link = await open_link(settings(broker), max_in_flight=500)
    try:
        acks = [link.publish("t/lost", b"%d" % i, retain=False) for i in range(50)]
        broker.kill()  # before the loop turn ends: nothing of it reaches a broker
        results = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), 10)
        assert all(isinstance(r, BrokerLinkLost) for r in results), results
        with pytest.raises(BrokerLinkLost):
            link.publish("t/lost", b"late", retain=False)
    finally:
        await link.close()
    broker.start()
    with Subscriber(broker, "t/#") as sub:
        again = await open_link(settings(broker), max_in_flight=500)
        try:
            acks = [again.publish("t/again", b"%d" % i, retain=False) for i in range(50)]
            await asyncio.wait_for(asyncio.gather(*acks), 10)
            await until(lambda: len(sub.on("t/again")) == 50, what="50 messages")
            assert sub.on("t/again") == [b"%d" % i for i in range(50)]
        finally:
            await again.close()


async def test_subscriptions_and_their_messages_still_read_through_the_buffer(
    broker: Mosquitto,
) -> None:
    """Messages in (the command topics) are read by paho from the same buffer as PUBACKs."""
    got: list[bytes] = []
    link = await open_link(
        settings(broker), max_in_flight=10, on_message=lambda t, p, r: got.append(p)
    )
    try:
        await asyncio.wait_for(link.subscribe("in/#"), 5)
        other = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="other")
        other.connect(broker.host, broker.port)
        other.loop_start()
        try:
            for i in range(100):
                other.publish("in/x", b"%d" % i, qos=1)
            await until(lambda: len(got) == 100, what="100 messages in")
        finally:
            other.disconnect()
            other.loop_stop()
        assert got == [b"%d" % i for i in range(100)]
    finally:
        await link.close()


async def test_a_send_waiting_for_a_slot_learns_that_the_link_is_lost(broker: Mosquitto) -> None:
    """The window is full of one group's publishes when the broker dies: the group fails,
    its slots are freed, and a second sender waiting for a slot gets BrokerLinkLost (not a
    wait that never ends)."""
    link = await open_link(settings(broker), max_in_flight=4)
    try:
        first = PubackGroup(asyncio.get_running_loop(), link.slots)
        for i in range(link.window):
            await link.publish_in(first, "t/w", b"%d" % i, retain=False)
        broker.kill()
        second = PubackGroup(asyncio.get_running_loop(), link.slots)
        waiting = asyncio.ensure_future(link.publish_in(second, "t/w", b"late", retain=False))
        with pytest.raises(BrokerLinkLost):
            await asyncio.wait_for(first.finish(), 10)
        with pytest.raises(BrokerLinkLost):
            await asyncio.wait_for(waiting, 10)
        assert not link.slots.locked()
    finally:
        await link.close()


async def test_a_long_stream_in_yields_to_the_loop_between_reads(broker: Mosquitto) -> None:
    """Hundreds of retained windows (the sink's sweep of ``<base>/devices/#``): one readable
    callback takes at most ``_REFILLS_PER_TURN`` kernel reads, then lets the loop's other
    callbacks run and comes back itself for what it read ahead (the selector cannot see it)."""
    from edge_agent.forward.mqtt.link import _READ_SIZE, _REFILLS_PER_TURN

    size, n = 8192, 600
    other = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="other")
    other.connect(broker.host, broker.port)
    other.loop_start()
    try:
        infos = [
            other.publish(f"big/{i:04d}", bytes([i % 251]) * size, qos=1, retain=True)
            for i in range(n)
        ]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)
    finally:
        other.disconnect()
        other.loop_stop()
    turn = 0
    per_turn: dict[int, int] = {}
    got: list[str] = []

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        got.append(topic)
        per_turn[turn] = per_turn.get(turn, 0) + 1

    async def ticker() -> None:
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)

    link = await open_link(settings(broker), max_in_flight=10, on_message=on_message)
    tick = asyncio.create_task(ticker())
    try:
        await asyncio.wait_for(link.subscribe("big/#"), 5)
        await until(lambda: len(got) == n, what=f"{n} retained messages")
        assert sorted(got) == [f"big/{i:04d}" for i in range(n)]  # every one, once
        bound = _REFILLS_PER_TURN * _READ_SIZE // size + 2  # a read may end mid-message
        assert max(per_turn.values()) <= bound, per_turn
    finally:
        tick.cancel()
        await link.close()


async def test_paho_queues_entries_of_the_shape_the_link_joins(broker: Mosquitto) -> None:
    """The link reads paho's private queue (``Client._out_packet``): its entries must carry
    the keys ``_coalesce`` uses, with the types it expects. A paho that changes them fails
    here, not as a reconnect loop in production (pyproject pins paho below 2.3)."""
    link = await open_link(settings(broker), max_in_flight=10)
    try:
        link._writer_armed = True  # hold the flush: look at the queue as paho left it
        ack = link.publish("t/shape", b"x", retain=False)
        entry = link.client._out_packet[-1]
        assert set(packet(3, b"x")) <= set(entry), sorted(entry)
        assert isinstance(entry["packet"], bytes | bytearray)
        assert entry["pos"] == 0 and entry["to_process"] == len(entry["packet"])
        assert entry["command"] & 0xF0 == 0x30 and entry["qos"] == 1
        link._writer_armed = False
        link._write()
        assert not (await asyncio.wait_for(ack, 5)).is_failure
    finally:
        await link.close()
