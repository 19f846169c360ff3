"""The simulated clock: device_sim's ``SimClock``, pinned to a start, running fast or frozen."""

from __future__ import annotations

from datetime import datetime

from device_sim.clock import SimClock

__all__ = ["SimClock", "make_clock"]


def _frozen() -> float:
    return 0.0


def make_clock(start: datetime | None, speed: float = 1.0, *, frozen: bool = False) -> SimClock:
    """A clock at ``start`` (UTC; None: now) that runs at ``speed``, or, when ``frozen``, moves
    only by ``advance()`` (what tests want: no verdict can depend on how fast the machine is)."""
    if frozen:
        return SimClock(start, 1.0, monotonic=_frozen)
    return SimClock(start, speed)
