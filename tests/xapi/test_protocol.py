"""The sans-I/O protocol: no sockets, no event loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent import jsoncodec
from edge_agent.xapi import errors
from edge_agent.xapi.endpoint import DeviceEndpoint, format_fingerprint, normalize_fingerprint
from edge_agent.xapi.protocol import (
    HELD_NOTIFICATIONS_MAX,
    ErrorResponse,
    Malformed,
    Notification,
    Response,
    XapiProtocol,
    command_method,
    split_path,
)

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # when a frame arrived: pinned


def sent(req: Any) -> dict[str, Any]:
    doc = jsoncodec.loads(req.text)
    assert isinstance(doc, dict)
    return doc


def answer(request_id: int, result: Any) -> str:
    return jsoncodec.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def feedback(device_id: int, payload: dict[str, Any]) -> str:
    return jsoncodec.dumps(
        {"jsonrpc": "2.0", "method": "xFeedback/Event", "params": {"Id": device_id, **payload}}
    )


def noop(payload: dict[str, Any]) -> None:
    pass


# --- encoding --------------------------------------------------------------------------------


def test_paths_from_strings_and_lists() -> None:
    assert split_path("Configuration Time Zone") == ["Configuration", "Time", "Zone"]
    assert split_path("  Status/SystemUnit  Uptime ") == ["Status", "SystemUnit", "Uptime"]
    assert split_path(["Status", "Video", "Input", "Connector", "1"]) == [
        "Status",
        "Video",
        "Input",
        "Connector",
        1,
    ]
    with pytest.raises(ValueError):
        split_path("   ")
    assert command_method("Bookings List") == "xCommand/Bookings/List"
    assert command_method(["xCommand", "Bookings", "Book"]) == "xCommand/Bookings/Book"


def test_requests_are_numbered_and_encoded() -> None:
    p = XapiProtocol()
    get = p.get("Configuration Time Zone")
    query = p.query("Status Bookings **")
    xset = p.set("Configuration Bookings AdhocBooking BookingTimeout", 120)
    cmd = p.command("Bookings List", {"DayOffset": 0, "Days": 2})
    assert [r.request_id for r in (get, query, xset, cmd)] == [1, 2, 3, 4]
    assert sent(get) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "xGet",
        "params": {"Path": ["Configuration", "Time", "Zone"]},
    }
    assert sent(query)["params"] == {"Query": ["Status", "Bookings", "**"]}
    assert sent(xset)["params"] == {
        "Path": ["Configuration", "Bookings", "AdhocBooking", "BookingTimeout"],
        "Value": 120,
    }
    assert sent(cmd)["method"] == "xCommand/Bookings/List"
    assert sent(cmd)["params"] == {"DayOffset": 0, "Days": 2}
    assert p.outstanding == 4


def test_subscribe_and_unsubscribe_requests() -> None:
    p = XapiProtocol()
    sub = p.subscriptions.add("Event Bookings", noop, True)
    req = p.subscribe(sub)
    assert sent(req)["method"] == "xFeedback/Subscribe"
    assert sent(req)["params"] == {"Query": ["Event", "Bookings"], "NotifyCurrentValue": True}
    [resp] = p.receive(answer(req.request_id, {"Id": 7}), T0)
    assert isinstance(resp, Response) and resp.result == {"Id": 7}
    assert sub.device_id == 7
    unsub = p.unsubscribe(sub.key)
    assert unsub is not None and sent(unsub)["params"] == {"Id": 7}
    assert p.subscriptions.get(sub.key) is None
    assert p.unsubscribe(sub.key) is None


# --- decoding --------------------------------------------------------------------------------


def test_response_and_error_decoded_and_typed() -> None:
    p = XapiProtocol(device="room-4a")
    a, b = p.get("Status SystemUnit Uptime"), p.command("Bookings Book", {})
    [ok] = p.receive(answer(a.request_id, 1234), T0)
    assert ok == Response(a.request_id, "xGet", 1234)
    [err] = p.receive(
        jsoncodec.dumps(
            {
                "jsonrpc": "2.0",
                "id": b.request_id,
                "error": {"code": 1, "message": "Command failed", "data": {"Cause": "NoSlot"}},
            }
        ),
        T0,
    )
    assert isinstance(err, ErrorResponse)
    exc = err.exception("room-4a")
    assert isinstance(exc, errors.CommandError) and exc.cause == "NoSlot"
    assert "room-4a" in str(exc) and "NoSlot" in str(exc)
    assert p.outstanding == 0


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (-32700, errors.ParseError),
        (-32600, errors.InvalidRequest),
        (-32601, errors.MethodNotFound),
        (-32602, errors.InvalidParams),
        (-32603, errors.InternalError),
        (1, errors.CommandError),
        (-31999, errors.PermissionDenied),
        (-31998, errors.TooManySubscriptions),
        (-31997, errors.NotReady),
        (42, errors.XapiError),
    ],
)
def test_error_table(code: int, cls: type[errors.XapiError]) -> None:
    exc = errors.error_for_code(code, "m", device="d")
    assert type(exc) is cls and exc.code == code and exc.device == "d"


def test_notification_routed_by_device_id_and_rekeyed_after_reconnect() -> None:
    p = XapiProtocol()
    sub = p.subscriptions.add(["Event", "Bookings"], noop, False)
    p.receive(answer(p.subscribe(sub).request_id, {"Id": 3}), T0)
    [n] = p.receive(feedback(3, {"Event": {"Bookings": {"Start": {"Id": "1"}}}}), T0)
    assert isinstance(n, Notification) and n.subscription is sub
    assert n.payload == {"Event": {"Bookings": {"Start": {"Id": "1"}}}}

    assert p.connection_lost() == []
    assert sub.device_id is None
    [m] = p.receive(feedback(3, {"Event": {}}), T0)
    assert isinstance(m, Malformed) and "unknown subscription" in m.reason

    p.receive(answer(p.subscribe(sub).request_id, {"Id": 9}), T0)
    assert sub.device_id == 9
    assert isinstance(p.receive(feedback(9, {"Event": {}}), T0)[0], Notification)
    assert isinstance(p.receive(feedback(3, {"Event": {}}), T0)[0], Malformed)


def test_current_value_before_subscribe_answer_is_held_then_delivered() -> None:
    p = XapiProtocol()
    sub = p.subscriptions.add("Status Bookings Availability", noop, True)
    req = p.subscribe(sub)
    assert p.receive(feedback(5, {"Status": {"Bookings": {}}}), T0) == []
    resp, n = p.receive(answer(req.request_id, {"Id": 5}), T0)
    assert isinstance(resp, Response) and isinstance(n, Notification)
    assert n.payload == {"Status": {"Bookings": {}}}


def test_notifications_carry_the_arrival_of_their_frame_even_when_held() -> None:
    p = XapiProtocol()
    sub = p.subscriptions.add("Status Bookings", noop, True)
    req = p.subscribe(sub)
    held_at = T0 + timedelta(seconds=1)
    assert p.receive(feedback(5, {"Status": {"Bookings": {}}}), held_at) == []
    # The subscribe answer comes 30 s later: the held value still says when it arrived.
    _, held = p.receive(answer(req.request_id, {"Id": 5}), T0 + timedelta(seconds=31))
    later = T0 + timedelta(seconds=40)
    [live] = p.receive(feedback(5, {"Status": {"Bookings": {"Current": {}}}}), later)
    assert isinstance(held, Notification) and isinstance(live, Notification)
    assert held.payload.arrived_at == held_at and live.payload.arrived_at == later
    # Handlers that only read the payload see a plain dict.
    assert isinstance(live.payload, dict)
    assert live.payload == {"Status": {"Bookings": {"Current": {}}}}
    assert "arrived_at" in repr(live.payload)


def test_held_notifications_for_nobody_become_malformed_and_are_bounded() -> None:
    p = XapiProtocol()
    sub = p.subscriptions.add("Event", noop, False)
    req = p.subscribe(sub)
    for _ in range(HELD_NOTIFICATIONS_MAX + 10):
        assert p.receive(feedback(99, {"Event": {}}), T0) == []
    events = p.receive(answer(req.request_id, {"Id": 1}), T0)
    assert isinstance(events[0], Response)
    assert len(events) == 1 + HELD_NOTIFICATIONS_MAX
    assert all(isinstance(e, Malformed) for e in events[1:])


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x01", "binary frame"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not a JSON-RPC object"),
        ('{"jsonrpc": "2.0"}', "neither"),
        ('{"jsonrpc": "2.0", "id": 77, "result": 1}', "unknown request id"),
        ('{"jsonrpc": "2.0", "id": "x", "result": 1}', "unknown request id"),
        (
            '{"jsonrpc": "2.0", "method": "xFeedback/Event", "params": {"Id": 4}}',
            "unknown subscription",
        ),
        ('{"jsonrpc": "2.0", "method": "xFeedback/Event", "params": []}', "integer Id"),
        ('{"jsonrpc": "2.0", "method": "xNonsense", "params": {}}', "unexpected method"),
    ],
)
def test_malformed_frames_are_reported_not_raised(frame: str | bytes, reason: str) -> None:
    p = XapiProtocol()
    [event] = p.receive(frame, T0)
    assert isinstance(event, Malformed) and reason in event.reason


def test_late_answer_after_forget_is_malformed() -> None:
    p = XapiProtocol()
    req = p.get("Status")
    p.forget(req.request_id)
    assert isinstance(p.receive(answer(req.request_id, 1), T0)[0], Malformed)


def test_connection_lost_returns_outstanding_ids() -> None:
    p = XapiProtocol()
    ids = [p.get("Status").request_id, p.command("Bookings List", {}).request_id]
    assert sorted(p.connection_lost()) == ids
    assert p.outstanding == 0


def test_identical_subscription_is_deduplicated() -> None:
    p = XapiProtocol()
    a = p.subscriptions.add("Event Bookings", noop, False)
    assert p.subscriptions.add(["Event", "Bookings"], noop, False) is a
    assert p.subscriptions.add("Event Bookings", noop, True) is not a


# --- endpoint --------------------------------------------------------------------------------


def test_endpoint_urls_auth_and_fingerprints() -> None:
    ep = DeviceEndpoint("room-4a", host="10.0.0.5", username="edge", password="s3cret")
    assert ep.ws_url == "wss://10.0.0.5/ws" and ep.secure
    assert "s3cret" not in repr(ep)
    assert ep.basic_authorization() == "Basic ZWRnZTpzM2NyZXQ="
    sub = DeviceEndpoint("d", url="ws://h/ws", username="a", password="b?>").auth_subprotocol()
    assert sub == "auth-YTpiPz4" and "=" not in sub  # base64url, no padding
    fp = "AB:" * 31 + "AB"
    assert DeviceEndpoint("d", host="h", fingerprint=fp).fingerprint == "ab" * 32
    assert normalize_fingerprint("ab" * 32) == "ab" * 32
    assert format_fingerprint("ab" * 32) == fp
    with pytest.raises(ValueError):
        DeviceEndpoint("d", host="h", fingerprint="abc")
    with pytest.raises(ValueError):
        DeviceEndpoint("d", url="https://h/ws")
    with pytest.raises(ValueError):
        DeviceEndpoint("d")
