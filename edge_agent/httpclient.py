"""The agent's one HTTP client stack: httpx's API on aiohttp's connection pool.

Every HTTP client the agent has (the webhook sink, ``check-config``'s webhook reach, the
calendar sources) is built here, so TLS, timeouts, pool limits and the environment rules are
the same everywhere. Why this stack: on loopback, 2 cores, one event per POST, httpx on
aiohttp's transport (the ``httpx-aiohttp`` package) delivered ~4x the webhooks/s of httpx's
own pool (README, benchmarks; ``bench/bench_webhook.py``), with the same httpx API and errors.

Trust: a ``ca_file`` is the only CA the client trusts, whatever the environment says
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``); without one, the system store.
The environment never adds proxies either (``trust_env`` is off): an agent's traffic goes where
its config says.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

import httpx
from httpx_aiohttp import AiohttpTransport

USER_AGENT = "roomos-edge-agent"


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
