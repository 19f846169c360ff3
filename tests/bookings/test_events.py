from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from edge_agent.bookings.events import (
    ENVELOPE_TYPES,
    EVENT_TYPES,
    IGNORED_EVENTS,
    RELIST_EVENTS,
    make_envelope,
    merge,
    new_event_id,
    parse_event,
)
from edge_agent.bookings.models import Organizer

from .helpers import booking, utc

# The simulator ships copies of the official schema extracts (../shared/xapi-schema).
SCHEMAS = Path(__file__).resolve().parents[2] / "device_sim" / "schema"


class OrganizerModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None
    email: str | None
    id: str | None


class BookingModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None
    meeting_id: str | None
    booking_request_uuid: str | None
    title: str | None
    start: str | None
    end: str | None
    organizer: OrganizerModel
    privacy: str | None
    platform: str | None
    join_url: str | None


class DataModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    event_id: str
    site: str
    device_id: str
    booking: BookingModel | None = None
    xevent: str | None
    observed_at: str


class EnvelopeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    timestamp: str
    data: DataModel


def validate(env: dict[str, Any]) -> EnvelopeModel:
    """The DESIGN.md "Contracts" envelope, and JSON-serializable."""
    json.dumps(env)
    m = EnvelopeModel.model_validate(env)
    assert m.type in ENVELOPE_TYPES
    assert m.timestamp.endswith("Z") and m.data.observed_at.endswith("Z")
    if m.data.booking is not None:
        for t in (m.data.booking.start, m.data.booking.end):
            assert t is None or (t.endswith("Z") and "T" in t)
    return m


def schema_event_names(path: Path) -> set[str]:
    d = json.loads(path.read_text())
    return {
        o["path"].split(" ", 1)[1]
        for o in d["objects"]
        if o["type"] == "Event" and o["path"].startswith("Bookings ")
    }


@pytest.mark.parametrize("schema", ["roomos-26.4.1-bookings.json", "roomos-11.19.1-bookings.json"])
def test_every_schema_event_is_mapped_relisted_or_ignored(schema: str) -> None:
    path = SCHEMAS / schema
    names = schema_event_names(path)
    assert names
    for n in names:
        assert (n in EVENT_TYPES) + (n in RELIST_EVENTS) + (n in IGNORED_EVENTS) == 1, n


def test_event_type_table() -> None:
    assert EVENT_TYPES == {
        "BookingRequested": "booking.requested",
        "BookingCreated": "booking.created",
        "BookingFailed": "booking.failed",
        "BookingMoved": "booking.moved",
        "Deleted": "booking.deleted",
        "Start": "booking.started",
        "End": "booking.ended",
        "ExtensionRequested": "booking.extension_requested",
        "ExtensionFailed": "booking.extension_failed",
        "EditRequested": "booking.edit_requested",
        "EditFailed": "booking.edit_failed",
        "CheckedIn": "booking.checked_in",
    }
    assert ENVELOPE_TYPES == set(EVENT_TYPES.values()) | {
        "booking.request_expired",
        "bookings.snapshot",
        "room.availability",
        "device.online",
        "device.offline",
        "room.occupancy",
        "booking.ghost",
        "booking.released",
    }


def test_envelope_shape(entropy: Callable[[int], bytes]) -> None:
    now = utc(2026, 11, 23, 9)
    b = booking(
        "7", meeting_id="M", booking_request_uuid="u-1", organizer=Organizer("Ada", "ada@x", None)
    )
    env = make_envelope(
        "booking.created",
        site="hq",
        device_id="room-4a",
        now=now,
        xevent="Bookings.BookingCreated",
        booking=b,
        extra={"pending_ms": 12},
        entropy=entropy,
    )
    m = validate(env)
    assert env["type"] == "booking.created"
    assert env["timestamp"] == "2026-11-23T09:00:00.000Z"
    assert list(env["data"])[:4] == ["event_id", "site", "device_id", "booking"]
    assert env["data"]["booking"] == {
        "id": "7",
        "meeting_id": "M",
        "booking_request_uuid": "u-1",
        "title": "Standup",
        "start": "2026-11-23T09:00:00.000Z",
        "end": "2026-11-23T10:00:00.000Z",
        "organizer": {"name": "Ada", "email": "ada@x", "id": None},
        "privacy": None,
        "platform": None,
        "join_url": None,
    }
    assert env["data"]["xevent"] == "Bookings.BookingCreated"
    assert env["data"]["pending_ms"] == 12
    assert m.data.site == "hq"


def test_request_uuid_is_in_data_on_every_request_outcome(entropy: Callable[[int], bytes]) -> None:
    """``data.booking_request_uuid``, where ``booking.failed`` and ``booking.request_expired``
    have it, also on ``booking.requested`` and on a ``booking.created`` that resolves a request
    (the agent's calendar bookings build theirs here too); kept in ``data.booking`` as well."""
    now = utc(2026, 11, 23, 9)
    common: dict[str, Any] = {"site": "hq", "device_id": "room-4a", "now": now, "entropy": entropy}
    made = booking("7", meeting_id="M", booking_request_uuid="u-1")
    created = make_envelope("booking.created", booking=made, extra={"pending_ms": 12}, **common)
    assert created["data"]["booking_request_uuid"] == "u-1"
    assert created["data"]["booking"]["booking_request_uuid"] == "u-1"
    validate(created)
    # A booking.created that closes no request (a re-list found a booking made long ago by a
    # request, or made elsewhere) names no request.
    later = make_envelope("booking.created", booking=made, extra={"reconciled": True}, **common)
    assert "booking_request_uuid" not in later["data"]
    partial = {"id": None, "booking_request_uuid": "u-2", "title": "Ad hoc"}
    requested = make_envelope("booking.requested", booking=partial, **common)
    assert requested["data"]["booking_request_uuid"] == "u-2"
    # A calendar room's request has no booking yet, only the request (its uuid is given).
    by_request = make_envelope(
        "booking.requested", extra={"request": {"booking_request_uuid": "u-3"}}, **common
    )
    assert by_request["data"]["booking_request_uuid"] == "u-3"
    untracked = make_envelope("booking.requested", booking={"booking_request_uuid": None}, **common)
    assert "booking_request_uuid" not in untracked["data"]
    deleted = make_envelope("booking.deleted", booking=made, **common)
    assert "booking_request_uuid" not in deleted["data"]


def test_envelope_observed_at_is_when_the_device_event_arrived() -> None:
    arrived, made = utc(2026, 11, 23, 9), utc(2026, 11, 23, 9, 2)
    env = make_envelope("booking.started", site="hq", device_id="d", now=made, observed_at=arrived)
    validate(env)
    assert env["data"]["observed_at"] == "2026-11-23T09:00:00.000Z"
    assert env["timestamp"] == "2026-11-23T09:02:00.000Z"
    plain = make_envelope("device.online", site="hq", device_id="d", now=made)
    assert plain["data"]["observed_at"] == plain["timestamp"]


def test_envelope_rejects_unknown_type_and_clobbering() -> None:
    with pytest.raises(ValueError):
        make_envelope("booking.updated", site="s", device_id="d", now=utc(2026, 1, 1))
    with pytest.raises(ValueError):
        make_envelope(
            "device.online", site="s", device_id="d", now=utc(2026, 1, 1), extra={"site": "other"}
        )


def test_event_id_is_uuid7_unique_and_time_sortable(entropy: Callable[[int], bytes]) -> None:
    now = utc(2026, 11, 23, 9)
    ids = [new_event_id(now + timedelta(microseconds=i), entropy) for i in range(0, 3000, 7)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    u = uuid.UUID(ids[0])
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert int(ids[0].replace("-", "")[:12], 16) == int(now.timestamp() * 1000)
    later = new_event_id(now + timedelta(milliseconds=1), entropy)
    assert later > ids[0]


def test_parse_event_shapes() -> None:
    body = {
        "Id": "7",
        "MeetingId": "M",
        "BookingRequestUUID": "u-1",
        "Duration": 30,
        "StartTime": "2026-11-23T10:00:00Z",
        "Title": "Ad hoc",
        "OrganizerEmail": "",
        "OrganizerName": "Ada",
    }
    for payload in (
        {"Event": {"Bookings": {"BookingCreated": body}}},
        {"Bookings": {"BookingCreated": body}},
        {"BookingCreated": body},
    ):
        ev = parse_event(payload)
        assert ev is not None
        assert ev.name == "BookingCreated" and ev.xevent == "Bookings.BookingCreated"
        assert ev.envelope_type == "booking.created"
        assert ev.start == utc(2026, 11, 23, 10) and ev.end == utc(2026, 11, 23, 10, 30)
        assert ev.organizer == Organizer("Ada", None, None)
        assert ev.key == "M"
    assert parse_event({"Event": {"Bookings": {"SyncRequired": {}}}}).name == "SyncRequired"  # type: ignore[union-attr]
    assert parse_event({}) is None
    assert parse_event({"Event": "x"}) is None
    # string durations, FailureCause
    ev = parse_event({"BookingFailed": {"BookingRequestUUID": "u", "FailureCause": "Timeout"}})
    assert ev is not None and ev.cause == "Timeout" and ev.booking_request_uuid == "u"
    ev = parse_event(
        {
            "End": {
                "Id": "7",
                "StartTime": "2026-11-23T10:00:00Z",
                "EndTime": "2026-11-23T10:45:00Z",
                "ScheduledDuration": "30",
            }
        }
    )
    assert ev is not None and ev.end == utc(2026, 11, 23, 10, 45) and ev.key == "id:7"


def test_merge() -> None:
    stored = booking(
        "7",
        meeting_id="M",
        organizer=Organizer("Ada", "ada@x", "o"),
        privacy="Private",
        join_url="https://j",
    )
    moved = parse_event(
        {
            "BookingMoved": {
                "Id": "7",
                "MeetingId": "",
                "StartTime": "2026-11-23T11:00:00Z",
                "Duration": "45",
            }
        }
    )
    assert moved is not None
    m = merge(stored, moved)
    assert m is not None
    assert (m.start, m.end) == (utc(2026, 11, 23, 11), utc(2026, 11, 23, 11, 45))
    assert m.meeting_id == "M" and m.privacy == "Private" and m.join_url == "https://j"
    assert m.organizer == stored.organizer
    # only Id: nothing to build from
    start_only = parse_event({"Start": {"Id": "9"}})
    assert start_only is not None and merge(None, start_only) is None
    assert merge(stored, start_only.__class__(name="Start", id="7")) == stored
