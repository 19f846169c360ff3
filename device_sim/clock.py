"""The simulated clock shared by a fleet: real speed or faster, and jumps on demand."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class SimClock:
    """Simulated UTC time: ``start`` plus elapsed real time times ``speed``, plus jumps.

    ``now()`` is cheap; ``advance(seconds)`` jumps forward and wakes the scheduler (listeners).
    """

    def __init__(
        self,
        start: datetime | None = None,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self.speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()
        self._offset = 0.0
        self.listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        elapsed = (self._monotonic() - self._origin) * self.speed + self._offset
        return self.start + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> datetime:
        """Jump ``seconds`` forward (events due in between fire at once, in order)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds
        for listener in list(self.listeners):
            listener()
        return self.now()

    def real_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of simulated time take in real time."""
        return sim_seconds / self.speed
