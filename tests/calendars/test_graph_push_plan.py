"""The pure renewal planner of Graph subscriptions, on pinned times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge_agent.calendars.graph.push import (
    MAX_EVENT_LIFETIME,
    Create,
    Delete,
    PushManager,
    Recreate,
    Renew,
    Subscription,
    next_check,
    plan_subscriptions,
)

NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
DAY = timedelta(days=1)
A, B = "room-a@contoso.com", "room-b@contoso.com"


def sub(room: str, mailbox: str, expires: datetime, **kw: bool) -> Subscription:
    return Subscription(room, mailbox, f"sub-{room}", "s3cret-client-state", expires, **kw)


def test_rooms_without_a_subscription_are_created_to_now_plus_lifetime() -> None:
    got = plan_subscriptions({"room-b": B, "room-a": A}, {}, {}, NOW, lifetime=3 * DAY)
    assert got == [Create("room-a", A, NOW + 3 * DAY), Create("room-b", B, NOW + 3 * DAY)]


def test_nothing_to_do_while_far_from_expiry() -> None:
    subs = {"room-a": sub("room-a", A, NOW + 2 * DAY + timedelta(seconds=1))}
    assert plan_subscriptions({"room-a": A}, subs, {}, NOW, renew_margin=2 * DAY) == []


@pytest.mark.parametrize("left", [timedelta(hours=23), DAY, timedelta(seconds=1)])
def test_renewed_within_the_margin(left: timedelta) -> None:
    subs = {"room-a": sub("room-a", A, NOW + left)}
    got = plan_subscriptions({"room-a": A}, subs, {}, NOW, lifetime=3 * DAY, renew_margin=DAY)
    assert got == [Renew("room-a", "sub-room-a", NOW + 3 * DAY)]


def test_reauthorization_required_renews_at_once() -> None:
    subs = {"room-a": sub("room-a", A, NOW + 2 * DAY, reauthorize=True)}
    assert plan_subscriptions({"room-a": A}, subs, {}, NOW, lifetime=3 * DAY) == [
        Renew("room-a", "sub-room-a", NOW + 3 * DAY)
    ]


@pytest.mark.parametrize(
    "s",
    [
        sub("room-a", A, NOW + 2 * DAY, removed=True),  # subscriptionRemoved or a 404
        sub("room-a", A, NOW),  # expired: a PATCH would get 404
        sub("room-a", "old-room@contoso.com", NOW + 2 * DAY),  # the room's mailbox changed
    ],
)
def test_gone_expired_or_moved_subscriptions_are_recreated(s: Subscription) -> None:
    got = plan_subscriptions({"room-a": A}, {"room-a": s}, {}, NOW, lifetime=3 * DAY)
    assert got == [Recreate("room-a", A, NOW + 3 * DAY)]


def test_a_room_that_left_is_deleted_even_while_backing_off() -> None:
    subs = {"room-a": sub("room-a", A, NOW + 2 * DAY), "room-b": sub("room-b", B, NOW + 2 * DAY)}
    got = plan_subscriptions({"room-a": A}, subs, {"room-b": NOW + DAY}, NOW)
    assert got == [Delete("room-b", "sub-room-b")]
    # a removed one is already gone at Graph: nothing to delete
    gone = {"room-b": sub("room-b", B, NOW + 2 * DAY, removed=True)}
    assert plan_subscriptions({}, gone, {}, NOW) == []


def test_a_failed_room_waits_for_its_retry_time() -> None:
    retry = {"room-a": NOW + timedelta(minutes=10)}
    assert plan_subscriptions({"room-a": A}, {}, retry, NOW) == []
    later = NOW + timedelta(minutes=10, seconds=1)
    assert plan_subscriptions({"room-a": A}, {}, retry, later) == [
        Create("room-a", A, later + timedelta(days=3))
    ]


def test_next_check_is_the_first_renewal_or_retry() -> None:
    subs = {
        "room-a": sub("room-a", A, NOW + 3 * DAY),
        "room-b": sub("room-b", B, NOW + 2 * DAY),
        "room-c": sub("room-c", A, NOW + timedelta(hours=1), removed=True),  # not waited on
    }
    assert next_check(subs, {}, renew_margin=DAY) == NOW + DAY
    assert next_check(subs, {"room-d": NOW + timedelta(hours=2)}, renew_margin=DAY) == (
        NOW + timedelta(hours=2)
    )
    assert next_check({}, {}) is None


def test_planned_renewal_time_is_a_fixed_point() -> None:
    """Renewing at next_check gives a subscription the planner leaves alone until the next one."""
    s = sub("room-a", A, NOW + 3 * DAY)
    at = next_check({"room-a": s}, {}, renew_margin=DAY)
    assert at is not None
    (renew,) = plan_subscriptions({"room-a": A}, {"room-a": s}, {}, at, lifetime=3 * DAY)
    assert isinstance(renew, Renew)
    renewed = Subscription("room-a", A, "sub-room-a", "x", renew.expires_at)
    assert plan_subscriptions({"room-a": A}, {"room-a": renewed}, {}, at) == []


def test_the_client_state_never_shows_in_repr() -> None:
    assert "s3cret" not in repr(sub("room-a", A, NOW))


@pytest.mark.parametrize(
    ("url", "kw", "needle"),
    [
        ("http://agent.example.com", {}, "https"),
        ("https://agent.example.com/?x=1", {}, "query"),
        ("https://agent.example.com", {"lifetime": MAX_EVENT_LIFETIME}, "10080"),
        ("https://agent.example.com", {"renew_margin": 4 * DAY}, "renew_margin"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(
    url: str, kw: dict[str, timedelta], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        PushManager(None, None, notification_url=url, poke=print, **kw)  # type: ignore[arg-type]
