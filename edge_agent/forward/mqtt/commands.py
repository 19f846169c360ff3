"""Commands that arrive over MQTT: a third-party sensor's ``<base>/rooms/<room>/occupancy/set``.

``{"in_use": true, "sensor": "pir-3", "duration_s": 600}`` (``duration_s`` optional) is passed
to the room's device as ``xCommand RoomAnalytics RoomInUse Set State Duration ID`` (RoomOS
26.8+), so rooms with their own sensors feed the device's view (and the agent hears it back in
``Status RoomAnalytics RoomInUse``, as ``room.occupancy`` ``in_use``).

The sink subscribes on every connect (:meth:`SensorCommands.subscribe`) and hands each message
to :meth:`SensorCommands.on_message`, which only parses and queues (it runs in paho's
callback); :meth:`SensorCommands.run` sends them to the device, one at a time, in order. The
queue is bounded: a sensor flooding the topic loses its oldest commands, counted, never the
agent's memory. A bad message is logged with what is wrong and dropped (nothing to retry).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent import jsoncodec

log = structlog.get_logger(__name__)

MAX_PAYLOAD = 4096
QUEUE_MAX = 1000


@dataclass(frozen=True, slots=True)
class SensorState:
    """One sensor reading for a room."""

    room: str
    in_use: bool
    sensor: str
    duration_s: int | None = None


class CommandError(ValueError):
    """A message that is not a sensor command (the text says what is wrong)."""


RoomInUseSender = Callable[[SensorState], Awaitable[None]]
"""Passes a reading to the room's device; raises with a person-readable message when the room
is unknown, the device is offline, or its software cannot take it (before RoomOS 26.8)."""


def parse(base: str, topic: str, payload: bytes) -> SensorState:
    """``<base>/rooms/<room>/occupancy/set`` and its JSON body -> a reading (pure).

    Raises:
        CommandError: another topic, a payload that is not the command's JSON, a bad field.
    """
    prefix = f"{base}/rooms/"
    if not topic.startswith(prefix) or not topic.endswith("/occupancy/set"):
        raise CommandError(f"{topic}: not a <base>/rooms/<room>/occupancy/set topic")
    room = topic[len(prefix) : -len("/occupancy/set")]
    if not room or "/" in room:
        raise CommandError(f"{topic}: no room id in the topic")
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"{topic}: payload over {MAX_PAYLOAD} bytes")
    try:
        doc = jsoncodec.loads(payload)
    except ValueError:
        raise CommandError(f"{topic}: payload is not JSON") from None
    if not isinstance(doc, dict):
        raise CommandError(f"{topic}: payload must be a JSON object")
    in_use = doc.get("in_use")
    if not isinstance(in_use, bool):
        raise CommandError(f"{topic}: in_use must be true or false")
    sensor = doc.get("sensor", "")
    if not isinstance(sensor, str) or len(sensor) > 255:
        raise CommandError(f"{topic}: sensor must be a string of at most 255 characters")
    duration = doc.get("duration_s")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= 86400
    ):
        raise CommandError(f"{topic}: duration_s must be whole seconds within 0..86400")
    return SensorState(room, in_use, sensor, duration)


class SensorCommands:
    """The ``occupancy/set`` subscription of one MQTT sink."""

    def __init__(self, base: str, send: RoomInUseSender, queue_max: int = QUEUE_MAX) -> None:
        self.base = base.rstrip("/")
        self._send = send
        self._queue: collections.deque[SensorState] = collections.deque(maxlen=queue_max)
        self._ready = asyncio.Event()
        self.received = 0
        self.rejected = 0
        self.dropped = 0
        self.passed = 0
        self.refused = 0

    @property
    def topic_filter(self) -> str:
        return f"{self.base}/rooms/+/occupancy/set"

    async def subscribe(self, link: Any, timeout_s: float) -> None:
        """Subscribe on ``link`` (a :class:`~edge_agent.forward.mqtt.link.BrokerLink`)."""
        async with asyncio.timeout(timeout_s):
            await link.subscribe(self.topic_filter)

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """Parse and queue; called from the link's message callback (must not block)."""
        self.received += 1
        if retain:
            # A retained "in use" would be replayed on every reconnect, long after it was true.
            self.rejected += 1
            log.warning("mqtt: ignoring a retained sensor command; publish it unretained",
                        topic=topic)  # fmt: skip
            return
        try:
            state = parse(self.base, topic, payload)
        except CommandError as exc:
            self.rejected += 1
            log.warning("mqtt: bad sensor command dropped", error=str(exc))
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(state)
        self._ready.set()

    async def run(self) -> None:
        """Send queued readings to their devices, in order; runs until cancelled (safe)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                state = self._queue.popleft()
                try:
                    await self._send(state)
                    self.passed += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one room's refusal must not stop the rest
                    self.refused += 1
                    log.warning(
                        "occupancy sensor not passed to the device",
                        room=state.room,
                        sensor=state.sensor,
                        error=str(exc),
                    )

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "passed": self.passed,
            "refused": self.refused,
        }
