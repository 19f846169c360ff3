"""The pure delivery schedule: round robin, head-of-line isolation, retry due times, idling."""

from __future__ import annotations

from edge_agent.forward.schedule import (
    DeliverySchedule,
    OutboxEvent,
    RetryState,
    SinkProgress,
    StreamRead,
)


def ev(stream: str, seq: int) -> OutboxEvent:
    return OutboxEvent(seq, stream, f"{stream}-{seq}", "t", {}, b"{}", 0.0)


def test_streams_are_served_round_robin() -> None:
    s = DeliverySchedule()
    s.committed({"a": 1, "b": 2, "c": 3})
    assert [r.stream for r in s.choose(0, max_streams=2, max_batch=5)] == ["a", "b"]
    assert [r.stream for r in s.choose(0, max_streams=2, max_batch=5)] == ["c", "a"]


def test_a_retrying_head_blocks_only_its_stream_and_goes_alone() -> None:
    s = DeliverySchedule()
    s.committed({"a": 3, "b": 3})
    s.retry("a", 1, attempts=2, next_attempt_at=100.0, error="HTTP 503")
    assert s.choose(50, max_streams=5, max_batch=5) == [StreamRead("b", 0, 5)]
    assert s.next_due() == 100.0 and s.next_due(exclude={"a"}) is None
    assert s.choose(100, max_streams=5, max_batch=5, exclude={"b"}) == [StreamRead("a", 0, 1)]
    [batch] = s.batches([StreamRead("a", 0, 1)], [ev("a", 1)])
    assert batch[0].attempts == 2 and s.retrying()["a"]["error"] == "HTTP 503"
    s.done("a", [1])
    assert s.retrying() == {} and s.choose(100, max_streams=5, max_batch=5, exclude={"b"}) == [
        StreamRead("a", 1, 5)
    ]


def test_a_head_retried_after_a_retry_outcome_goes_with_its_batch() -> None:
    """Only a rejected batch is split: after a Retry (the receiver down) the whole batch is
    tried again, with the head's attempts."""
    s = DeliverySchedule()
    s.committed({"a": 3})
    s.retry("a", 1, attempts=2, next_attempt_at=100.0, error="HTTP 503", alone=False)
    assert s.choose(50, max_streams=5, max_batch=5) == []
    assert s.choose(100, max_streams=5, max_batch=5) == [StreamRead("a", 0, 5)]
    [batch] = s.batches([StreamRead("a", 0, 5)], [ev("a", 1), ev("a", 2), ev("a", 3)])
    assert [e.attempts for e in batch] == [2, 0, 0]


def test_a_stream_done_up_to_its_top_idles_until_a_commit() -> None:
    s = DeliverySchedule(SinkProgress(cursors={"a": 4}, retries={}, tops={"a": 4, "b": 1}))
    assert s.choose(0, max_streams=5, max_batch=5) == [StreamRead("b", 0, 5)]
    s.done("b", [1])
    assert s.choose(0, max_streams=5, max_batch=5) == []
    s.committed({"a": 5})
    assert s.choose(0, max_streams=5, max_batch=5) == [StreamRead("a", 4, 5)]


def test_a_stream_the_store_had_nothing_for_goes_idle_with_its_retry() -> None:
    s = DeliverySchedule(
        SinkProgress(cursors={}, retries={"a": RetryState(1, 1, 0.0, "x")}, tops={"a": 9})
    )
    reads = s.choose(0, max_streams=5, max_batch=5)
    assert s.batches(reads, []) == []  # the rows went (outbox cap): nothing to wait for
    assert s.retrying() == {} and s.choose(0, max_streams=5, max_batch=5) == []


def test_progress_made_during_the_read_keeps_the_stream_ready() -> None:
    s = DeliverySchedule()
    s.committed({"a": 3})
    reads = s.choose(0, max_streams=1, max_batch=1)
    s.done("a", [1])  # landed while the read ran
    assert s.batches(reads, []) == []
    assert s.choose(0, max_streams=1, max_batch=5) == [StreamRead("a", 1, 5)]
