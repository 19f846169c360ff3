"""The reconnect policy, without sockets or sleeping: delays for what happened at ``now``."""

from __future__ import annotations

import random

from edge_agent.backoff import Backoff
from edge_agent.xapi import errors
from edge_agent.xapi.reconnect import Reconnect, ReconnectPolicy

EXACT = Backoff(initial=1.0, maximum=30.0, factor=2.0, jitter=0.0)


def policy(**kw: float) -> ReconnectPolicy:
    return ReconnectPolicy(backoff=EXACT, **kw)


def unreachable() -> errors.Unreachable:
    return errors.Unreachable("room-4a: refused", device="room-4a")


def test_failed_connects_back_off_exponentially_up_to_the_cap() -> None:
    r = Reconnect(policy())
    assert [r.connect_failed(unreachable()) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_links_that_die_young_keep_backing_off() -> None:
    r = Reconnect(policy(stable_after=60.0))
    delays = []
    now = 0.0
    for _ in range(4):
        r.connected(now)
        now += 5.0  # up for 5 s each time: not stable
        delays.append(r.lost(now))
    assert delays == [1, 2, 4, 8]


def test_a_stable_link_resets_the_backoff() -> None:
    r = Reconnect(policy(stable_after=60.0))
    for _ in range(4):
        r.connect_failed(unreachable())
    r.connected(100.0)
    assert r.lost(160.0) == 1.0  # up for exactly stable_after
    assert r.attempt == 1


def test_failed_connects_after_a_young_link_continue_the_count() -> None:
    r = Reconnect(policy(stable_after=60.0))
    r.connected(0.0)
    assert r.lost(1.0) == 1.0
    assert r.connect_failed(unreachable()) == 2.0


def test_a_refused_login_waits_the_auth_delay() -> None:
    r = Reconnect(policy(auth_retry_delay=600.0))
    auth = errors.AuthenticationFailed("room-4a: 403", device="room-4a")
    assert r.connect_failed(auth) == 600.0
    assert r.connect_failed(unreachable()) == 2.0  # the backoff kept counting underneath


def test_retry_after_is_honoured_but_capped() -> None:
    r = Reconnect(policy())
    limited = errors.RateLimited("room-4a: 503", device="room-4a", retry_after=45.0)
    assert r.connect_failed(limited) == 45.0
    absurd = errors.RateLimited("room-4a: 503", device="room-4a", retry_after=1e9)
    assert r.connect_failed(absurd) == 3600.0


def test_jitter_spreads_the_delays_within_bounds() -> None:
    r = Reconnect(ReconnectPolicy(backoff=Backoff(initial=10.0, jitter=0.3)), random.Random(7))
    delays = set()
    for _ in range(20):
        r.attempt = 0
        delays.add(r.connect_failed(unreachable()))
    assert len(delays) > 1
    assert all(7.0 <= d <= 13.0 for d in delays)
