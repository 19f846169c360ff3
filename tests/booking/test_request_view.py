"""``GET /v1/requests/{uuid}``'s status from the stored row (pure): only the row's own status
is final; a pending row past its deadline is ``overdue``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent.ops.api_bookings import request_view
from edge_agent.store.requests import BookingRequestRow

DEADLINE = datetime(2026, 11, 23, 9, 1, tzinfo=UTC)


def row(status: Any, outcome: dict[str, Any] | None = None) -> BookingRequestRow:
    return BookingRequestRow(
        uuid="u1",
        room_id="room-4a",
        status=status,
        created_at=DEADLINE.timestamp() - 60,
        updated_at=DEADLINE.timestamp() - 60,
        request={"title": "T", "expires_at": "2026-11-23T09:01:00.000Z"},
        outcome=outcome,
    )


@pytest.mark.parametrize(
    ("after", "shown"),
    [
        (timedelta(seconds=-1), "pending"),
        (timedelta(0), "overdue"),
        (timedelta(seconds=31), "overdue"),  # past the 30 s that used to read "expired"
        (timedelta(hours=20), "overdue"),
    ],
)
def test_a_pending_row_is_pending_then_overdue_never_expired(
    after: timedelta, shown: str
) -> None:
    assert request_view(row("pending"), DEADLINE + after)["status"] == shown


@pytest.mark.parametrize(
    ("status", "outcome", "extra"),
    [
        ("created", {"booking_id": "b1", "meeting_id": "m1", "booking": {}}, {"booking_id": "b1"}),
        ("failed", {"cause": "Decline"}, {"cause": "Decline"}),
        ("expired", {}, {}),
    ],
)
def test_a_closed_row_shows_its_own_status(
    status: str, outcome: dict[str, Any], extra: dict[str, Any]
) -> None:
    view = request_view(row(status, outcome), DEADLINE + timedelta(hours=1))
    assert view["status"] == status
    assert extra.items() <= view.items()


def test_an_unreadable_deadline_leaves_the_row_pending() -> None:
    bad = row("pending")
    bad.request["expires_at"] = "soon"
    assert request_view(bad, DEADLINE + timedelta(hours=1))["status"] == "pending"
