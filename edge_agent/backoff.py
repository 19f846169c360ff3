"""The one backoff schedule: jittered, capped exponential delays. Pure: the caller owns sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempt`` (1-based), "full jitter" within +-``jitter``.

    ``delay(attempt)`` grows ``initial * factor**(attempt-1)`` up to ``maximum``; the jitter
    spreads a fleet of agents (or 1,000 device links) so they do not retry in lockstep.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        r = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + r))

    def delay_honouring(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """Like :meth:`delay`, but never earlier than a server's ``Retry-After`` (capped)."""
        d = self.delay(attempt, rng)
        if retry_after is not None and retry_after > d:
            d = min(retry_after, max(self.maximum, 3600.0))
        return d
