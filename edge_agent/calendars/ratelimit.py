"""A request-rate limiter per API subject: a token bucket, reserved ahead, in call order.

Google counts its Calendar quota per minute per project *and per user* (the user being the
admin a service account impersonates): every request of the agent runs as that one subject, so
2,000 rooms polled every minute would ask for 2,000+ requests a minute through one user. The
limiter keeps the agent under the quota instead of meeting it as ``rateLimitExceeded`` answers.

:class:`TokenBucket` is pure (``reserve(now) -> seconds to wait``); :class:`RequestRateLimiter`
is the async shell that sleeps. Reserving ahead means the bucket may go into debt: each caller
gets the next free slot, so waiters are served in the order they asked and the long-run rate
never exceeds ``per_minute``. Over any minute at most ``burst + per_minute`` requests leave, so
the defaults (500/min, burst 20) stay under Google's 600. A caller cancelled while waiting
loses its slot (the rate then runs a little under the limit, never over it).

The bucket is the guard; :func:`quota_poll_interval_s` is the plan. Polling N rooms faster
than the bucket allows would not break the quota, but every round would queue behind the others
(a push-triggered fetch or a booking too, minutes late at 2,000 rooms). So a poller asks for
the interval its rooms fit in at :data:`POLL_SHARE` of the rate, and polls no faster: the
bucket then rarely makes anyone wait, and the rest of the rate is left for what is not planned
(fetches after a push, extra pages of a full sync, watch channels, bookings).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_PER_MINUTE",
    "POLL_SHARE",
    "RequestRateLimiter",
    "TokenBucket",
    "quota_poll_interval_s",
]

DEFAULT_PER_MINUTE = 500.0  # Google's per-user default is 600/min; leave room for a burst
DEFAULT_BURST = 20
POLL_SHARE = 0.9  # of the rate planned for polling rounds; the rest is for unplanned requests


def quota_poll_interval_s(
    rooms: int, per_minute: float, *, requests_per_round: float = 1.0, share: float = POLL_SHARE
) -> float:
    """The shortest poll interval at which ``rooms`` rooms, each sending ``requests_per_round``
    requests a round, use no more than ``share`` of ``per_minute`` (0.0 for no rooms).

    2,000 rooms at the default 500/min: 2,000 * 60 / 450 = 266.7 s."""
    if per_minute <= 0 or not 0 < share <= 1:
        raise ValueError(
            f"a rate must be positive and a share in (0, 1], not {per_minute}, {share}"
        )
    return max(0, rooms) * requests_per_round * 60.0 / (per_minute * share)


@dataclass(slots=True)
class TokenBucket:
    """``per_minute`` tokens a minute, at most ``burst`` saved up. Starts full."""

    per_minute: float
    burst: int
    _tokens: float = field(init=False)
    _at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise ValueError(f"a request rate must be positive, not {self.per_minute}/min")
        if self.burst < 1:
            raise ValueError(f"a burst must be at least 1 request, not {self.burst}")
        self._tokens = float(self.burst)

    def reserve(self, now: float) -> float:
        """Take the next request slot at monotonic time ``now``: seconds until it may be sent
        (0.0 when a token is saved up)."""
        rate = self.per_minute / 60.0
        if self._at is not None and now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * rate)
        self._at = now if self._at is None else max(self._at, now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0.0 else -self._tokens / rate


class RequestRateLimiter:
    """One :class:`TokenBucket` per subject (the impersonated user). Share one instance
    between every client that calls as the same subjects."""

    def __init__(
        self,
        *,
        per_minute: float = DEFAULT_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        TokenBucket(per_minute, burst)  # fail on a bad setting now, not at the first request
        self.per_minute = per_minute
        self.burst = burst
        self._monotonic = monotonic
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}

    async def acquire(self, subject: str) -> float:
        """Wait for ``subject``'s next slot; returns the seconds waited (for the logs/tests)."""
        bucket = self._buckets.get(subject)
        if bucket is None:
            bucket = self._buckets[subject] = TokenBucket(self.per_minute, self.burst)
        wait = bucket.reserve(self._monotonic())
        if wait > 0:
            await self._sleep(wait)
        return wait
