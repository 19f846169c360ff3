"""The one clock. Domain code takes ``now`` as an argument; only I/O shells call these."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (timeouts, latency)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def utc_iso(dt: datetime) -> str:
    """``2026-11-23T09:00:00.123Z``: millisecond UTC ISO 8601, as in the event envelope."""
    # isoformat is C; strftime showed in profiles (every envelope carries two timestamps).
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_utc(s: str) -> datetime:
    """Parse a device/UTC timestamp such as ``2026-11-23T09:00:00Z`` into an aware datetime."""
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


system_clock = SystemClock()


def unix_time(clock: Clock) -> Callable[[], float]:
    """``clock``'s wall time as unix seconds, for the parts that take a ``() -> float`` clock
    (the store's ``created_at`` and ages, the drainer's retry times and delivery latency)."""

    def now() -> float:
        return clock.now().timestamp()

    return now
