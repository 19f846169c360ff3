"""The per-subject token bucket: burst, then the rate; per subject; in call order; never over."""

from __future__ import annotations

import pytest

from edge_agent.calendars.ratelimit import RequestRateLimiter, TokenBucket


def test_burst_then_one_slot_per_interval() -> None:
    b = TokenBucket(per_minute=120, burst=3)  # one every 0.5 s
    assert [b.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [b.reserve(0.0) for _ in range(3)] == [0.5, 1.0, 1.5]  # queued, in call order


def test_refills_up_to_the_burst_only() -> None:
    b = TokenBucket(per_minute=60, burst=2)
    b.reserve(0.0), b.reserve(0.0)
    assert b.reserve(1000.0) == 0.0 and b.reserve(1000.0) == 0.0  # full again, not 1,000 more
    assert b.reserve(1000.0) == 1.0


def test_never_more_than_burst_plus_rate_in_any_minute() -> None:
    b = TokenBucket(per_minute=500, burst=20)
    sent: list[float] = []
    now = 0.0
    for _ in range(3000):  # callers far faster than the quota
        sent.append(now + b.reserve(now))
        now += 0.001
    for i, t in enumerate(sent):
        in_minute = sum(1 for u in sent[i:] if u < t + 60.0)
        assert in_minute <= 520  # burst + per_minute, under Google's 600


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(per_minute=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RequestRateLimiter(per_minute=60, burst=0)


async def test_subjects_have_their_own_buckets() -> None:
    waited: list[float] = []

    async def sleep(s: float) -> None:
        waited.append(s)

    lim = RequestRateLimiter(per_minute=60, burst=1, monotonic=lambda: 5.0, sleep=sleep)
    assert await lim.acquire("admin@a.example") == 0.0
    assert await lim.acquire("admin@b.example") == 0.0
    assert await lim.acquire("admin@a.example") == 1.0
    assert waited == [1.0]
