"""Booking requests made through the agent: which stored event closes which request (pure).

A request row (``booking_request``) is written when the local API or the MQTT mirror accepts a
booking, *before* ``Bookings Book`` goes to the device, so an answer that arrives at once still
finds it. The events that close a request carry its UUID; :func:`outcomes_of` reads them from a
change's envelopes and the writer applies the outcome in the same transaction that stores the
event, so ``GET /v1/requests/{uuid}`` never disagrees with what was forwarded. Only a pending
request changes: the first outcome wins (a reconciled ``booking.created`` after a
``booking.failed`` changes nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent import jsoncodec

RequestStatus = Literal["pending", "created", "failed", "expired"]

KEEP_S = 86_400.0
"""How long a request is kept after it was made (``GET /v1/requests/{uuid}`` then 404s)."""

_CLOSING: dict[str, RequestStatus] = {
    "booking.created": "created",
    "booking.failed": "failed",
    "booking.request_expired": "expired",
}


@dataclass(frozen=True, slots=True)
class BookingRequestRow:
    """One stored request: what was asked (``request``) and how it ended (``outcome``)."""

    uuid: str
    room_id: str
    status: RequestStatus
    created_at: float
    updated_at: float
    request: dict[str, Any]
    outcome: dict[str, Any] | None


def _uuid_of(data: Mapping[str, Any]) -> str | None:
    booking = data.get("booking")
    if isinstance(booking, Mapping) and booking.get("booking_request_uuid"):
        return str(booking["booking_request_uuid"])
    uuid = data.get("booking_request_uuid")
    return str(uuid) if uuid else None


def outcome_of(envelope: Mapping[str, Any]) -> tuple[str, RequestStatus, dict[str, Any]] | None:
    """``(uuid, status, outcome)`` when ``envelope`` closes a booking request, else ``None``."""
    status = _CLOSING.get(str(envelope.get("type")))
    data = envelope.get("data")
    if status is None or not isinstance(data, Mapping):
        return None
    uuid = _uuid_of(data)
    if uuid is None:
        return None
    outcome: dict[str, Any] = {"event_id": data.get("event_id"), "at": data.get("observed_at")}
    if status == "created":
        booking = data.get("booking") if isinstance(data.get("booking"), Mapping) else {}
        assert isinstance(booking, Mapping)
        outcome |= {
            "booking_id": booking.get("id"),
            "meeting_id": booking.get("meeting_id"),
            "booking": dict(booking),
        }
    elif status == "failed":
        outcome["cause"] = data.get("cause")
    return uuid, status, outcome


def outcomes_of(envelopes: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, bytes]]:
    """``(uuid, status, outcome JSON)`` for each envelope that closes a request, in order."""
    out: list[tuple[str, str, bytes]] = []
    for env in envelopes:
        found = outcome_of(env)
        if found is not None:
            uuid, status, outcome = found
            out.append((uuid, status, jsoncodec.dumpb(outcome)))
    return out


def row_from_db(uuid: str, row: tuple[Any, ...]) -> BookingRequestRow:
    room_id, status, created_at, updated_at, request, outcome = row
    return BookingRequestRow(
        uuid=uuid,
        room_id=str(room_id),
        status=status,
        created_at=float(created_at),
        updated_at=float(updated_at),
        request=jsoncodec.loads(request),
        outcome=jsoncodec.loads(outcome) if outcome is not None else None,
    )
