"""The agent's HTTP client stacks: aiohttp's connection pool, with httpx's API or without.

Every HTTP client the agent has (the webhook sink, ``check-config``'s webhook reach, the
calendar sources) is built here, so TLS, timeouts, pool limits and the environment rules are
the same everywhere. The calendar sources use httpx's API on aiohttp's transport (the
``httpx-aiohttp`` package: on loopback, 2 cores, one event per POST, ~4x the webhooks/s of
httpx's own pool; ``bench/bench_webhook.py``). The webhook sink, the one hot path (a POST per
batch, thousands a second in a backlog), talks to aiohttp directly (:func:`lean_session`,
:func:`post_bounded`): ~115 us of CPU per POST against ~265 us through httpx's layer on the
same pool (``bench/bench_http.py``, 20-event batches, 8 in flight), with the same rules below.

Trust: a ``ca_file`` is the only CA the client trusts, whatever the environment says
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``); without one, the system store.
The environment never adds proxies either (``trust_env`` is off): an agent's traffic goes where
its config says.

Hostile or broken servers: send requests with :func:`request_bounded`, not ``client.post()``.
httpx reads a whole answer into memory (a 200 MiB body took the agent from 58 to 340 MiB, an
endless chunked one to 4.7 GB) and its timeouts are per socket operation (a server sending one
byte every 2 s never times out). :func:`request_bounded` reads at most ``max_bytes`` of the
body (raw, never decompressed: no gzip bombs), drops the connection when more was coming (a
finished answer keeps its keep-alive connection), and puts one deadline on the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import aiohttp
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    import httpx

USER_AGENT = "roomos-edge-agent"
MAX_ANSWER_BYTES = 4096
"""How much of an answer's body :func:`request_bounded` reads by default: status and headers
are what a webhook's outcome depends on; this is room for an error message's excerpt."""


def tls_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying client context: only ``ca_file`` when given, else the system CAs.

    Raises ``OSError`` / ``ssl.SSLError`` when ``ca_file`` cannot be read as PEM.
    """
    # create_default_context(cafile=...) loads that bundle instead of the default paths, so
    # SSL_CERT_FILE cannot add to it; hostname checking and CERT_REQUIRED are its defaults.
    return ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file is not None else None)


def http_client(
    *,
    timeout_s: float,
    max_connections: int,
    ca_file: str | os.PathLike[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An HTTP/1.1 keep-alive client; close it with ``await client.aclose()``.

    Args:
        timeout_s: connect, read, write and pool timeout of one request.
        max_connections: the pool's bound (match the number of requests in flight).
        ca_file: PEM CA bundle to verify servers with, instead of the system's.
        headers: sent with every request, after ``user-agent``.

    Redirects are not followed: a redirect is a misconfigured URL, and following one would
    send a signed body somewhere the config does not name.
    """
    import httpx  # here: a webhook-only agent never loads httpx (~3.5 MiB, tests/test_imports.py)
    from httpx_aiohttp import AiohttpTransport

    verify = tls_context(ca_file)
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        http1=True,
        http2=False,
        verify=verify,
        timeout=httpx.Timeout(timeout_s),
        limits=limits,
        headers={"user-agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
        trust_env=False,
        transport=AiohttpTransport(verify=verify, limits=limits, trust_env=False),
    )


def lean_session(
    *,
    timeout_s: float,
    max_connections: int,
    ca_file: str | os.PathLike[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientSession:
    """The same client as :func:`http_client` (HTTP/1.1 keep-alive, ``max_connections``, only
    ``ca_file`` trusted, no proxies from the environment), on aiohttp alone; send with
    :func:`post_bounded`. Call it with a loop running; close it with ``await session.close()``.

    No cookie jar: a receiver's ``Set-Cookie`` is never sent back (nor parsed). Answers are not
    decompressed (only an excerpt of a body is ever read), so none is asked for compressed
    (``accept-encoding: identity``): the excerpt of an error stays readable.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, ssl=tls_context(ca_file)
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity", **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


LEAN_ERRORS = (aiohttp.ClientError, OSError, ValueError)
"""What :func:`post_bounded` raises besides ``TimeoutError`` (an ``ssl.SSLError`` is an
``OSError``; aiohttp's certificate errors are ``ClientError`` and carry the SSL reason)."""


async def post_bounded(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    deadline_s: float,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> BoundedResponse[CIMultiDictProxy[str]]:
    """:func:`request_bounded` on a :func:`lean_session`: the status, the headers and at most
    ``max_bytes`` of the raw body, one deadline on the whole exchange, redirects not followed;
    a body that goes on past ``max_bytes`` drops the connection, a finished one keeps it.

    Raises:
        TimeoutError: past ``deadline_s`` (the message says so), or aiohttp's own connect or
            read timeouts (also ``ClientError``s).
        aiohttp.ClientError, OSError, ValueError: the request failed (:data:`LEAN_ERRORS`).
    """
    deadline = asyncio.timeout(deadline_s)
    try:
        async with deadline:
            resp = await session.request(
                method, url, data=content, headers=headers, allow_redirects=False
            )
            try:
                parts: list[bytes] = []
                have = 0
                truncated = False
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    if have + len(chunk) > max_bytes:
                        parts.append(chunk[: max_bytes - have])
                        truncated = True
                        break
                    parts.append(chunk)
                    have += len(chunk)
            except BaseException:
                resp.close()
                raise
            if truncated:
                resp.close()  # more was coming: this connection is not reused
            else:
                resp.release()
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TimeoutError(
            f"no complete answer within {deadline_s:g} s (the request's deadline)"
        ) from None
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return BoundedResponse(resp.status, resp.headers, body, truncated)


H = TypeVar("H", bound=Mapping[str, str])


@dataclass(frozen=True, slots=True)
class BoundedResponse(Generic[H]):
    """An answer of which at most ``max_bytes`` of the body were read.

    ``truncated``: the body went on past ``body`` (the connection was dropped, not reused).
    ``headers``: case-insensitive (``httpx.Headers``, or aiohttp's ``CIMultiDictProxy``).
    """

    status: int
    headers: H
    body: bytes
    truncated: bool

    def excerpt_text(self, limit: int = 200) -> str:
        """The body's start as one printable line of at most ``limit`` characters (for logs
        and error messages: a receiver's answer is untrusted text)."""
        text = self.body[: limit * 4].decode("utf-8", "replace")
        line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
        if len(line) > limit or (self.truncated and line):
            return line[:limit] + "..."
        return line


async def request_bounded(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline_s: float,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
    decoded: bool = False,
) -> BoundedResponse[httpx.Headers]:
    """Send one request; read the status, the headers and at most ``max_bytes`` of the body.

    The whole exchange (connect, sending the body, the answer's head and the bytes read) has
    to finish within ``deadline_s``: the client's own timeouts are per socket operation, so a
    server trickling bytes would hold the request for ever. When the body goes on past
    ``max_bytes``, the rest is not read and the connection is closed (aiohttp does not pool a
    connection whose answer is unfinished); an answer read to its end keeps its connection.

    ``decoded``: the body with its ``Content-Encoding`` undone (a source that parses JSON);
    ``max_bytes`` then counts decoded bytes, each read inflating at most one transport chunk.
    Off by default: an answer that only feeds an excerpt is never decompressed.

    Raises:
        httpx.TimeoutException: past ``deadline_s`` (the message says so), or the client's own
            connect/read/write/pool timeouts.
        httpx.HTTPError, OSError, ssl.SSLError: as ``client.send`` does.
    """
    import httpx

    request = client.build_request(method, url, content=content, headers=headers, params=params)
    deadline = asyncio.timeout(deadline_s)
    try:
        async with deadline:
            response = await client.send(request, stream=True)
            try:
                body, truncated = await _read_prefix(response, max_bytes, decoded)
            finally:
                await response.aclose()
                _unlink(response)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise httpx.TimeoutException(
            f"no complete answer within {deadline_s:g} s (the request's deadline)",
            request=request,
        ) from None
    return BoundedResponse(response.status_code, response.headers, body, truncated)


def _unlink(response: httpx.Response) -> None:
    """Break the reference cycle a streamed answer is in, once it is closed.

    httpx wraps the stream as ``BoundAsyncStream(stream, response=response)``, and the response
    holds that wrapper: each answer (with its request, headers, URL and aiohttp's response,
    ~35 objects) was garbage that only the cyclic collector frees. At the agent's young
    threshold (:mod:`edge_agent.ops.gctune`) a webhook agent collected ~20,000 of them every few
    seconds in one 20-65 ms pause of the loop, the tail of every event's latency.
    """
    import httpx

    response.stream = httpx.ByteStream(b"")


async def _read_prefix(
    response: httpx.Response, max_bytes: int, decoded: bool
) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of the body; True when more was coming."""
    parts: list[bytes] = []
    have = 0
    chunks = (
        response.aiter_bytes() if decoded else response.aiter_raw()
    )  # an async generator: closed below, even when left early
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if have + len(chunk) > max_bytes:
                parts.append(chunk[: max_bytes - have])
                return b"".join(parts), True
            parts.append(chunk)
            have += len(chunk)
    return b"".join(parts), False
