"""The webhook sink against a real loopback receiver: signatures, answers, batches, TLS."""

from __future__ import annotations

import base64
import ssl
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import trustme
from standardwebhooks import Webhook

from edge_agent import jsoncodec
from edge_agent.forward.base import Delivered, Gone, OutboxEvent, Reject, Retry
from edge_agent.forward.webhook import (
    WebhookSink,
    classify,
    decode_secret,
    parse_retry_after,
    sign,
)
from tests.receivers import Reply, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
SECRET2 = "whsec_" + base64.b64encode(b"n" * 32).decode()


def event(device: str = "room-1", n: int = 0) -> OutboxEvent:
    envelope = {
        "type": "booking.created",
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": f"{device}-{n}", "device_id": device, "n": n},
    }
    return OutboxEvent(
        seq=n + 1,
        device_id=device,
        event_id=f"{device}-{n}",
        type="booking.created",
        envelope=envelope,
        body=jsoncodec.dumpb(envelope),
        created_at=time.time(),
    )


@pytest.fixture
async def rx() -> Any:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sink(rx: WebhookReceiver) -> Any:
    s = WebhookSink(rx.url, [SECRET], timeout_s=2.0)
    yield s
    await s.close()


def test_decode_secret_requires_the_whsec_prefix() -> None:
    assert decode_secret(SECRET) == b"k" * 24
    bare = SECRET.removeprefix("whsec_")
    for bad in (bare, "whsec_", "whsec_not base64!", "WHSEC_" + bare):
        with pytest.raises(ValueError, match="whsec_") as exc:
            decode_secret(bad)
        assert bare not in str(exc.value)  # never echo a secret
    with pytest.raises(ValueError):
        WebhookSink("http://127.0.0.1:9/", [bare])


def test_signature_is_standard_webhooks() -> None:
    body = event().body
    ts = int(time.time())
    keys = [base64.b64decode(SECRET.removeprefix("whsec_"))]
    headers = {
        "webhook-id": "room-1-0",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(keys, "room-1-0", ts, body),
    }
    Webhook(SECRET).verify(body, headers)


def test_classify_and_retry_after() -> None:
    assert classify(200, None) == Delivered()
    assert classify(204, None) == Delivered()
    assert classify(410, None) == Gone("HTTP 410 Gone")
    assert classify(429, 3.0) == Retry("HTTP 429", 3.0)
    assert classify(408, None) == Retry("HTTP 408", None)
    assert classify(503, None) == Retry("HTTP 503", None)
    assert classify(400, None) == Reject("HTTP 400", 400)
    # 425 Too Early: RFC 8470 says the client can retry; DESIGN's "other 4xx" is 4xx-not-these
    assert classify(425, 2.0) == Retry("HTTP 425", 2.0)
    assert classify(422, None, "bad id") == Reject("HTTP 422: bad id", 422)
    # A redirect the agent does not follow: rejected (dead letter at once), naming the Location.
    moved = classify(301, None, "", "https://new.example/hook")
    assert isinstance(moved, Reject) and moved.status == 301
    assert "redirect to https://new.example/hook" in moved.reason
    assert "does not follow redirects" in moved.reason
    bare = classify(307, None)
    assert isinstance(bare, Reject) and "no Location given" in bare.reason
    hostile = classify(302, None, "", "https://x/\x1b[31m" + "a" * 500)
    assert isinstance(hostile, Reject) and "\x1b" not in hostile.reason
    assert len(hostile.reason) < 400
    now = time.time()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    date = formatdate(now + 30, usegmt=True)
    ra = parse_retry_after(date, now)
    assert ra is not None and 28 <= ra <= 31


async def test_delivers_a_verified_webhook(rx: WebhookReceiver, sink: WebhookSink) -> None:
    assert await sink.send([event()]) == Delivered()
    [d] = rx.deliveries
    assert d.verified and d.webhook_id == "room-1-0"
    assert d.headers["content-type"] == "application/json"
    assert d.body == event().body
    assert rx.events[0]["data"]["event_id"] == "room-1-0"


async def test_rotated_secrets_sign_twice(rx: WebhookReceiver) -> None:
    new_rx = WebhookReceiver(SECRET2)  # a receiver that already has the new secret
    await new_rx.start()
    s = WebhookSink(new_rx.url, [SECRET, SECRET2])
    try:
        assert await s.send([event()]) == Delivered()
        s2 = WebhookSink(rx.url, [SECRET, SECRET2])  # and one still on the old secret
        assert await s2.send([event()]) == Delivered()
        await s2.close()
        assert new_rx.deliveries[0].headers["webhook-signature"].count("v1,") == 2
        assert new_rx.bad_signatures == 0 and rx.bad_signatures == 0
    finally:
        await s.close()
        await new_rx.stop()


async def test_answers_map_to_outcomes(rx: WebhookReceiver, sink: WebhookSink) -> None:
    rx.script(
        Reply(503, retry_after="2"),
        Reply(429),
        Reply(410),
        Reply(400),
        Reply(500),
        Reply(425, retry_after="1"),
        Reply(308, location="https://elsewhere.example/hook"),
    )
    assert await sink.send([event()]) == Retry("HTTP 503", 2.0)
    assert await sink.send([event()]) == Retry("HTTP 429", None)
    assert await sink.send([event()]) == Gone("HTTP 410 Gone")
    assert await sink.send([event()]) == Reject("HTTP 400", 400)
    assert isinstance(await sink.send([event()]), Retry)
    assert await sink.send([event()]) == Retry("HTTP 425", 1.0)
    redirected = await sink.send([event()])
    assert isinstance(redirected, Reject) and redirected.status == 308
    assert "redirect to https://elsewhere.example/hook" in redirected.reason
    assert len(rx.deliveries) == 7  # the redirect was not followed


async def test_unreachable_and_timeout_are_retried(rx: WebhookReceiver) -> None:
    port = rx.port
    await rx.go_down()
    s = WebhookSink(f"http://127.0.0.1:{port}/hook", [SECRET], timeout_s=0.2)
    try:
        out = await s.send([event()])
        assert isinstance(out, Retry) and ("connect" in out.reason.lower()), out
        await rx.come_back()
        rx.script(Reply(200, delay_s=1.0))
        out = await s.send([event()])
        assert isinstance(out, Retry) and "timeout" in out.reason
    finally:
        await s.close()


async def test_batch_body_and_id(rx: WebhookReceiver) -> None:
    s = WebhookSink(rx.url, [SECRET], batch_max=10)
    try:
        events = [event("room-2", i) for i in range(3)]
        assert await s.send(events) == Delivered()
        [d] = rx.deliveries
        assert d.verified and d.webhook_id == "batch_room-2-0_3"
        doc = jsoncodec.loads(d.body)
        assert doc["type"] == "batch" and doc["timestamp"].endswith("Z")
        assert [e["data"]["n"] for e in doc["data"]["events"]] == [0, 1, 2]
        assert [e["data"]["n"] for e in rx.events] == [0, 1, 2]
        assert await s.send([event("room-2", 3)]) == Delivered()  # a lone event: plain webhook
        assert rx.deliveries[-1].webhook_id == "room-2-3"
    finally:
        await s.close()


def private_ca(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1 from a fresh CA, and that CA's PEM."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / f"{name}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_ctx, ca_file


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    server_ctx, ca_file = private_ca(tmp_path, "ca")
    rx = WebhookReceiver(SECRET, ssl_context=server_ctx)
    await rx.start()
    good = WebhookSink(rx.url, [SECRET], ca_file=str(ca_file))
    untrusted = WebhookSink(rx.url, [SECRET])  # system CAs do not know the test CA
    try:
        assert rx.url.startswith("https://")
        assert await good.send([event()]) == Delivered()
        out = await untrusted.send([event()])
        assert isinstance(out, Retry) and "certificate verify failed" in out.reason.lower(), out
        assert len(rx.accepted_ids) == 1
    finally:
        await good.close()
        await untrusted.close()
        await rx.stop()


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
async def test_ca_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The environment names the receiver's CA; ca_file names another: ca_file decides."""
    server_ctx, receivers_ca = private_ca(tmp_path, "receivers-ca")
    _, other_ca = private_ca(tmp_path, "other-ca")
    monkeypatch.setenv(variable, str(receivers_ca))
    rx = WebhookReceiver(SECRET, ssl_context=server_ctx)
    await rx.start()
    pinned_elsewhere = WebhookSink(rx.url, [SECRET], ca_file=str(other_ca))
    pinned_right = WebhookSink(rx.url, [SECRET], ca_file=str(receivers_ca))
    try:
        out = await pinned_elsewhere.send([event()])
        assert isinstance(out, Retry) and "certificate verify failed" in out.reason.lower(), out
        assert await pinned_right.send([event()]) == Delivered()
        monkeypatch.setenv(variable, str(other_ca))  # and the environment cannot take it away
        built_later = WebhookSink(rx.url, [SECRET], ca_file=str(receivers_ca))
        assert await built_later.send([event(n=1)]) == Delivered()
        await built_later.close()
        assert len(rx.accepted_ids) == 2
    finally:
        await pinned_elsewhere.close()
        await pinned_right.close()
        await rx.stop()


async def test_probe_is_an_options_request_that_delivers_nothing(rx: WebhookReceiver) -> None:
    s = WebhookSink(rx.url, [SECRET], timeout_s=2.0)
    try:
        assert await s.probe() == 405  # the receiver takes POST only
        assert rx.requests == 0 and not rx.deliveries  # no POST reached the handler
    finally:
        await s.close()


async def test_requests_carry_our_headers_and_never_a_receivers_cookie() -> None:
    """The sink is on aiohttp alone (httpclient.lean_session): the same request headers as the
    agent's other clients, no cookie echoed back, no compressed answer asked for, the pool
    reused, and a send after close() refused rather than reopening the pool."""
    from aiohttp import web

    seen: list[dict[str, str]] = []
    ports: set[int] = set()

    async def hook(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        await request.read()
        resp = web.Response(status=204)
        resp.set_cookie("session", "abc")
        return resp

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    s = WebhookSink(f"http://127.0.0.1:{port}/hook", [SECRET], headers={"x-api-key": "k1"})
    try:
        for n in range(3):
            assert await s.send([event(n=n)]) == Delivered()
    finally:
        await s.close()
        await runner.cleanup()
    assert [h.get("cookie") for h in seen] == [None, None, None]
    assert len(ports) == 1  # one keep-alive connection for the three
    for h in seen:
        assert h["user-agent"] == "roomos-edge-agent"
        assert h["content-type"] == "application/json"
        assert h["accept-encoding"] == "identity"
        assert h["x-api-key"] == "k1"
        assert h["webhook-id"].startswith("room-1-")
    out = await s.send([event()])
    assert isinstance(out, Retry) and "closed" in out.reason
