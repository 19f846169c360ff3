"""The webhook sink: Standard Webhooks 1.0 over HTTP/1.1 keep-alive (aiohttp).

Each event is one POST whose body is the stored envelope, byte for byte, with the headers

- ``webhook-id``: the event's ``event_id`` (receivers drop duplicates by it),
- ``webhook-timestamp``: unix seconds of this attempt,
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each secret
  (``whsec_<base64 key>``), space-separated, so a receiver keeps verifying while the secrets
  are rotated.

Answers are read with :func:`edge_agent.httpclient.post_bounded`: status and headers decide,
at most a few KiB of the body are read (an excerpt goes in the reason of a failed delivery), a
longer body's connection is dropped, and ``timeout_s`` bounds the whole request, so a receiver
that trickles its answer costs one attempt of ``timeout_s`` and is retried like a timeout.

Answers: 2xx delivered; 408, 429, 5xx, network errors and timeouts retried (``Retry-After`` in
seconds or as an HTTP date is honoured); 425 Too Early is retried too (RFC 8470: the receiver
asks for the same request again later); 410 stops the sink; other 4xx reject the event, and the
drainer dead-letters it at once (the receiver said it will not take it: trying again cannot
change that). 3xx rejects it as well, the reason naming the ``Location``: the agent does not
follow redirects (it would re-send signed events to wherever an answer points), so a redirect
is an answer that will not change until the configured URL does.

Batching (opt-in, ``batch_max > 1``): up to ``batch_max`` events of ONE device, in order, go in
one POST, for receivers that accept it. The body is
``{"type": "batch", "timestamp": "...", "data": {"events": [envelope, ...]}}``; its
``webhook-id`` is ``batch_<first event_id>_<count>`` (deterministic, so a retried batch keeps
its id); receivers dedupe by the inner ``data.event_id``. A lone event is always sent as a
plain webhook, so a batching receiver must accept both shapes. The outcome applies to the
whole batch.

HTTP: aiohttp's pool, without httpx's layer over it (:func:`edge_agent.httpclient.lean_session`:
the same TLS, pool, proxy and redirect rules as the agent's other clients). That layer cost
~150 us of CPU per POST of ~265 (``bench/bench_http.py``), over half of each POST's client
side: in a 100,000-event backlog (5,000 batches of 20), ~0.75 s of the loop. Measured on
loopback, 2 cores, receiver in another process (bench/bench_webhook.py, through httpx then):
one event per POST ~1,450-3,100 events/s at 1-16 in flight (httpx's own pool managed
~500-720); with ``batch_max=20`` ~20-35k events/s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import structlog

from edge_agent.clock import utc_iso
from edge_agent.forward.base import Delivered, Gone, OutboxEvent, Outcome, Reject, Retry
from edge_agent.httpclient import (
    LEAN_ERRORS,
    BoundedResponse,
    lean_session,
    post_bounded,
    tls_context,
)

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger(__name__)

_RETRY_STATUSES = frozenset({408, 425, 429})
"""Timeout, Too Early (RFC 8470 section 5.2: "the client can retry"), Too Many Requests."""

_LOCATION_MAX = 200


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (Standard Webhooks' format).

    The one parser of webhook secrets: the config validation calls it too.

    Raises:
        ValueError: not ``whsec_`` followed by non-empty base64 (the message never contains
            the secret).
    """
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret must start with whsec_ (whsec_<base64 key>)")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except ValueError:
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("the key after whsec_ is empty")
    return key


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<sig>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
        for k in keys
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def batch_body(events: Sequence[OutboxEvent], now: float) -> bytes:
    """The batch envelope, spliced from the stored bodies (no re-serialization)."""
    ts = utc_iso(datetime.fromtimestamp(now, UTC))
    return (
        b'{"type":"batch","timestamp":"'
        + ts.encode()
        + b'","data":{"events":['
        + b",".join(e.body for e in events)
        + b"]}}"
    )


def classify(
    status: int, retry_after: float | None, excerpt: str = "", location: str | None = None
) -> Outcome:
    """The outcome of an HTTP answer (pure); ``excerpt`` (the body's start) ends the reason,
    ``location`` (a redirect's ``Location`` header) is named in a 3xx's."""
    said = f": {excerpt}" if excerpt else ""
    if 200 <= status < 300:
        return Delivered()
    if status == 410:
        return Gone(f"HTTP 410 Gone{said}")
    if status in _RETRY_STATUSES or status >= 500:
        return Retry(f"HTTP {status}{said}", retry_after)
    if 400 <= status < 500:
        return Reject(f"HTTP {status}{said}", status)
    if 300 <= status < 400:
        where = _printable(location) if location else "no Location given"
        return Reject(
            f"HTTP {status} redirect to {where}: the agent does not follow redirects; "
            f"set the webhook url to where the receiver is{said}",
            status,
        )
    return Retry(f"HTTP {status} (unexpected; check the URL){said}", retry_after)


def _printable(text: str) -> str:
    """An answer's header as one printable line of at most :data:`_LOCATION_MAX` characters
    (it is the receiver's text, and it goes into logs and the dead letter)."""
    line = "".join(c if c.isprintable() else " " for c in text[: _LOCATION_MAX * 2]).strip()
    return line if len(line) <= _LOCATION_MAX else line[: _LOCATION_MAX - 3] + "..."


class WebhookSink:
    """Posts events to one URL as Standard Webhooks."""

    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        *,
        name: str = "webhook",
        timeout_s: float = 10.0,
        ca_file: str | None = None,
        batch_max: int = 1,
        max_connections: int = 8,
        headers: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        Args:
            url: the receiver (``https://`` verified against the system CAs or ``ca_file``).
            secrets: one or more ``whsec_`` secrets (several while rotating); never logged.
            name: the outbox progress key.
            timeout_s: the deadline of one POST, from connecting to the answer's last byte read.
            ca_file: PEM CA bundle to verify the receiver with, instead of the system's.
            batch_max: events per POST (1: one standard webhook per event; >1: see module doc).
            max_connections: keep-alive pool size; match the drainer's ``max_in_flight``.
            headers: extra request headers (e.g. an API key header the receiver wants).
            clock: unix-seconds wall clock (``webhook-timestamp``).
        """
        if not secrets:
            raise ValueError("a webhook sink needs at least one secret")
        self.name = name
        self.url = url
        self.max_batch = max(1, batch_max)
        self._keys = [decode_secret(s) for s in secrets]
        self._time = clock
        self._closed = False
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._ca_file = ca_file
        tls_context(ca_file)  # an unreadable ca_file fails here, where the sink is built
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        """Made on the first request (aiohttp wants a running loop), closed by close()."""
        self._log = log.bind(sink=name)
        self.last_answer: BoundedResponse[Any] | None = None
        """The receiver's last answer (``edge-agent webhook test`` prints it)."""

    async def run(self) -> None:
        """Nothing to keep up between requests (the pool reconnects on demand)."""

    def ready(self) -> bool:
        return not self._closed

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        """POST ``events`` (one device's, in order) as one webhook or one batch.

        Cancelling it is safe: the request is abandoned and the events stay undelivered.
        """
        now = self._time()
        ts = int(now)
        if len(events) == 1:
            msg_id = events[0].event_id
            body = events[0].body
        else:
            msg_id = f"batch_{events[0].event_id}_{len(events)}"
            body = batch_body(events, now)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self._keys, msg_id, ts, body),
        }
        try:
            resp = await self._request("POST", body, headers)
        except TimeoutError as exc:  # the deadline, or aiohttp's connect / read timeouts
            return Retry(f"timeout: {type(exc).__name__}: {exc}")
        except ssl.SSLError as exc:
            return Retry(f"TLS error: {exc}")
        except LEAN_ERRORS as exc:  # refused, reset, TLS verification (ClientConnectorError...)
            return Retry(f"network error: {type(exc).__name__}: {exc}")
        self.last_answer = resp
        retry_after = parse_retry_after(resp.headers.get("retry-after"), now)
        if 200 <= resp.status < 300:
            return Delivered()
        return classify(
            resp.status, retry_after, resp.excerpt_text(), resp.headers.get("location")
        )

    async def _request(
        self, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> BoundedResponse[Any]:
        session = self._session
        if session is None:
            if self._closed:
                raise ValueError("the webhook sink is closed")
            session = self._session = lean_session(
                timeout_s=self._timeout_s,
                max_connections=self._max_connections,
                ca_file=self._ca_file,
                headers=self._headers,
            )
        return await post_bounded(
            session, method, self.url, content=body, headers=headers, deadline_s=self._timeout_s
        )

    async def probe(self) -> int:
        """One ``OPTIONS`` request to the URL, on this sink's client; its HTTP status.

        Proves DNS, TCP, TLS and that an HTTP server answers, without delivering anything (a
        signed test event would land in the receiver's data): what ``check-config`` reports.
        Raises ``TimeoutError`` or one of :data:`~edge_agent.httpclient.LEAN_ERRORS` when
        nothing answers.
        """
        return (await self._request("OPTIONS")).status

    async def close(self) -> None:
        """Close the connection pool. Safe to call twice."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
