"""The liveness deadline machine, without sockets or a clock: ``now`` is a number we pick."""

from __future__ import annotations

import pytest

from edge_agent.xapi.liveness import NOTHING_DUE, Dead, Due, Liveness, LivenessTimes

TIMES = LivenessTimes(
    ping_interval=25.0, ping_timeout=20.0, probe_interval=60.0, probe_timeout=15.0
)


def test_first_ping_and_probe_are_an_interval_after_connecting() -> None:
    live = Liveness(TIMES, now=1000.0)
    assert live.deadline() == 1025.0
    assert live.tick(1024.9) is NOTHING_DUE
    assert live.tick(1025.0) == Due(ping=True, probe=False)


def test_an_answered_ping_schedules_the_next_one_interval_after_the_last() -> None:
    live = Liveness(TIMES, now=0.0)
    live.ping_sent(25.0)
    assert live.awaiting_pong
    assert live.deadline() == 45.0  # the pong deadline comes first
    live.pong_received()
    assert not live.awaiting_pong
    assert live.deadline() == 50.0
    assert live.tick(50.0) == Due(ping=True)


def test_a_missing_pong_kills_the_link_at_its_deadline_not_before() -> None:
    live = Liveness(TIMES, now=0.0)
    live.ping_sent(25.0)
    assert live.tick(44.9) is NOTHING_DUE
    assert live.tick(45.0) == Dead("no WebSocket pong within 20 s")


def test_no_second_ping_while_one_is_outstanding() -> None:
    times = LivenessTimes(ping_interval=5.0, ping_timeout=20.0, probe_interval=None)
    live = Liveness(times, now=0.0)
    live.ping_sent(5.0)
    # interval passed, timeout not yet: nothing to send, and the next wake is the deadline
    assert live.tick(10.0) is NOTHING_DUE
    assert live.deadline() == 25.0


def test_a_missing_probe_answer_kills_the_link() -> None:
    live = Liveness(TIMES, now=0.0)
    live.ping_sent(25.0)
    live.pong_received()
    assert live.tick(60.0) == Due(ping=True, probe=True)
    live.ping_sent(60.0)
    live.probe_sent(60.0)
    live.pong_received()
    assert live.deadline() == 75.0
    assert live.tick(75.0) == Dead("no answer to the liveness probe within 15 s")


def test_an_answered_probe_is_due_again_an_interval_after_it_was_sent() -> None:
    times = LivenessTimes(ping_interval=None, probe_interval=60.0, probe_timeout=15.0)
    live = Liveness(times, now=0.0)
    assert live.tick(60.0) == Due(probe=True)
    live.probe_sent(60.0)
    live.probe_answered()
    assert live.deadline() == 120.0
    assert live.tick(119.0) is NOTHING_DUE


def test_probe_timeout_longer_than_its_interval_keeps_one_outstanding() -> None:
    times = LivenessTimes(ping_interval=None, probe_interval=1.0, probe_timeout=5.0)
    live = Liveness(times, now=0.0)
    live.probe_sent(1.0)
    live.probe_answered()
    assert live.deadline() == 6.0  # never before the previous probe's deadline


def test_everything_disabled_never_wakes() -> None:
    live = Liveness(LivenessTimes(ping_interval=None, probe_interval=None), now=0.0)
    assert live.deadline() is None
    assert live.tick(1e12) is NOTHING_DUE


def test_pings_without_a_timeout_are_keepalive_only() -> None:
    times = LivenessTimes(ping_interval=10.0, ping_timeout=None, probe_interval=None)
    live = Liveness(times, now=0.0)
    live.ping_sent(10.0)
    assert not live.awaiting_pong  # no pong is waited for, so none can be missed
    assert live.deadline() == 20.0
    assert live.tick(1e6) == Due(ping=True)


@pytest.mark.parametrize(
    "kwargs",
    [{"ping_interval": 0.0}, {"ping_timeout": -1.0}, {"probe_interval": 0}, {"probe_timeout": 0}],
)
def test_times_that_are_not_positive_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be > 0 s"):
        LivenessTimes(**kwargs)  # type: ignore[arg-type]
