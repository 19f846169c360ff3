"""Google Calendar API usage quotas, as the usage-limits guide states them (pure, no I/O).

"Two types of quotas are enforced: per minute per project ... and per minute per project per
user" (defaults 10,000 and 600 requests); "quotas are calculated per minute using a sliding
window"; past either one "you are rate limited and receive a 403 usageLimits status code or a
429 usageLimits status code". The user is the account a request runs as: for a service account
with domain-wide delegation, the impersonated ``sub``.

Here: the requests admitted in the trailing 60 s are counted per user and for the project; one
past either count is refused (403 ``rateLimitExceeded`` for the user, 429 for the project, the
errors guide's shapes) and not counted. ``peak`` keeps the most any user had in one window,
so a test or a bench can show that a client stayed under the quota rather than assume it.
Real time (monotonic), not the simulated clock: a quota is about the rate requests arrive.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PROJECT_PER_MINUTE", "USER_PER_MINUTE", "QuotaVerdict", "UsageQuota"]

USER_PER_MINUTE = 600
PROJECT_PER_MINUTE = 10_000
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    """Why a request was refused: HTTP status and the error's reason."""

    status: int
    reason: str
    message: str


@dataclass
class UsageQuota:
    """Sliding one-minute counts; ``0`` for a limit turns that quota off."""

    per_user: int = USER_PER_MINUTE
    per_project: int = PROJECT_PER_MINUTE
    monotonic: Callable[[], float] = time.monotonic
    refused: int = 0
    peak: dict[str, int] = field(default_factory=dict)  # user -> most requests in one window
    _users: dict[str, deque[float]] = field(default_factory=dict)
    _project: deque[float] = field(default_factory=deque)

    def admit(self, user: str) -> QuotaVerdict | None:
        """Count one request of ``user`` now; None when admitted, else the refusal."""
        now = self.monotonic()
        horizon = now - WINDOW_S
        mine = self._users.setdefault(user.lower(), deque())
        for q in (mine, self._project):
            while q and q[0] <= horizon:
                q.popleft()
        if self.per_user and len(mine) >= self.per_user:
            self.refused += 1
            return QuotaVerdict(403, "rateLimitExceeded", "Rate Limit Exceeded")
        if self.per_project and len(self._project) >= self.per_project:
            self.refused += 1
            return QuotaVerdict(429, "rateLimitExceeded", "Rate Limit Exceeded")
        mine.append(now)
        self._project.append(now)
        key = user.lower()
        self.peak[key] = max(self.peak.get(key, 0), len(mine))
        return None

    def in_window(self, user: str) -> int:
        """Requests of ``user`` in the trailing minute (as of the last admitted request)."""
        return len(self._users.get(user.lower(), ()))
