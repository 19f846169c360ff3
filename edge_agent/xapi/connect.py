"""Opening one device link: TCP, TLS, the certificate pin, the WebSocket upgrade.

:func:`open_link` returns an open :class:`~websockets.asyncio.client.ClientConnection` or
raises the typed :class:`~edge_agent.xapi.errors.ConnectError` that says what to fix (every
``OSError``, ``ssl`` and websockets handshake failure is mapped here, nowhere else). The
fingerprint pin is checked after TLS and *before* the upgrade request, which carries the
credentials, is written. At most :data:`OPENS_IN_FLIGHT` opening handshakes run at once per
event loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import weakref
from dataclasses import dataclass

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol
from websockets.uri import parse_uri
from websockets.version import version as websockets_version

from . import lean, tls
from .endpoint import DeviceEndpoint, format_fingerprint
from .errors import (
    AuthenticationFailed,
    ConnectError,
    DeviceRebooting,
    FingerprintMismatch,
    HandshakeFailed,
    HttpsOnly,
    RateLimited,
    TlsError,
    Unreachable,
)

USER_AGENT = f"roomos-edge-agent websockets/{websockets_version}"
MAX_MESSAGE_SIZE = 16 * 2**20

OPENS_IN_FLIGHT = 64
"""Opening handshakes in flight per event loop: a reconnect storm of 1,000 devices is spread
out (TLS handshakes cost CPU) and the handshakes' temporary memory does not pile up at once."""


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How a link is opened (see :class:`~edge_agent.xapi.client.XapiClient` for each)."""

    open_timeout: float = 10.0
    close_timeout: float = 2.0
    max_size: int = MAX_MESSAGE_SIZE
    max_queue: int = 16
    write_limit: int = 2**15
    auth_retry_delay: float = 600.0  # only quoted in the 403 error message


async def open_link(ep: DeviceEndpoint, opts: LinkOptions) -> ClientConnection:
    """Open the device's link; raise the typed :class:`ConnectError`. Cancelling is safe."""
    d = ep.device_id
    try:
        async with _opening_slot(), asyncio.timeout(opts.open_timeout):
            return await _establish(ep, opts)
    except ConnectError:
        raise
    except InvalidStatus as exc:
        raise status_error(ep, exc, opts.auth_retry_delay) from None
    except ssl.SSLCertVerificationError as exc:
        raise TlsError(
            f"{d}: the device's certificate did not verify ({exc.verify_message}); give the "
            "device CA in ca_file, pin its SHA-256 fingerprint, or (last resort) set "
            "insecure = true",
            device=d,
        ) from None
    except ssl.SSLError as exc:
        raise TlsError(
            f"{d}: TLS handshake failed ({exc.reason or exc}); check that {ep.ws_url} is the "
            "device's HTTPS port",
            device=d,
        ) from None
    except socket.gaierror as exc:
        raise Unreachable(
            f"{d}: cannot resolve the device's name ({exc.strerror}); check the host in the "
            "configuration and DNS",
            device=d,
        ) from None
    except ConnectionRefusedError:
        raise Unreachable(
            f"{d}: connection refused by {ep.ws_url}; is the device up, the port right, and "
            "HTTP(S) enabled on it?",
            device=d,
        ) from None
    except TimeoutError:
        raise Unreachable(
            f"{d}: no connection to {ep.ws_url} within {opts.open_timeout:g} s; check the "
            "network path and firewall",
            device=d,
        ) from None
    except OSError as exc:
        raise Unreachable(
            f"{d}: cannot reach {ep.ws_url} ({exc.strerror or exc}); check the network path",
            device=d,
        ) from None
    except InvalidHandshake as exc:
        raise HandshakeFailed(
            f"{d}: WebSocket upgrade failed ({exc}); is {ep.ws_url} the device's xAPI endpoint?",
            device=d,
        ) from None


async def _establish(ep: DeviceEndpoint, opts: LinkOptions) -> ClientConnection:
    loop = asyncio.get_running_loop()
    uri = parse_uri(ep.ws_url)
    headers: dict[str, str] = {}
    subprotocols: list[Subprotocol] | None = None
    if ep.auth == "subprotocol":
        subprotocols = [Subprotocol(ep.auth_subprotocol())]
    else:
        headers["Authorization"] = ep.basic_authorization()
    # No extensions: permessage-deflate costs ~33 KiB per connection (DESIGN.md).
    protocol = ClientProtocol(uri, subprotocols=subprotocols, max_size=opts.max_size)
    conn = lean.LeanConnection(
        protocol,
        ping_interval=None,  # pings are sent by the client's reader, not a task per connection
        ping_timeout=None,
        close_timeout=opts.close_timeout,
        max_queue=opts.max_queue,
        write_limit=opts.write_limit,
    )
    if uri.secure:
        if ep.insecure and ep.fingerprint is None:
            structlog.get_logger(__name__).warning(
                "TLS verification is OFF for this device (insecure = true): anyone on the "
                "path can read its credentials; pin its fingerprint instead",
                device=ep.device_id,
                url=ep.ws_url,
            )
        ctx = tls.context_for(ep)
        if lean.lean_tls_supported(loop):
            waiter: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: lean.LeanSSLProtocol(
                    loop,
                    conn,
                    ctx,
                    waiter,
                    server_side=False,
                    server_hostname=uri.host,
                    ssl_handshake_timeout=opts.open_timeout,
                ),
                uri.host,
                uri.port,
            )
            try:
                await waiter
            except BaseException:
                transport.abort()
                raise
        else:
            await loop.create_connection(
                lambda: conn, uri.host, uri.port, ssl=ctx, server_hostname=uri.host
            )
        # The credentials go in the upgrade request below: the pin is checked first.
        if ep.fingerprint is not None:
            actual = tls.peer_fingerprint(conn.transport.get_extra_info("ssl_object"))
            if actual != ep.fingerprint:
                conn.transport.abort()
                raise FingerprintMismatch(
                    f"{ep.device_id}: the device's certificate is not the pinned one "
                    f"(expected SHA-256 {format_fingerprint(ep.fingerprint)}, got "
                    f"{format_fingerprint(actual)}); credentials were not sent. If the "
                    "device's certificate was replaced, update the fingerprint",
                    device=ep.device_id,
                    expected=ep.fingerprint,
                    actual=actual,
                )
    else:
        await loop.create_connection(lambda: conn, uri.host, uri.port)
    try:
        await conn.handshake(headers, USER_AGENT)
    except BaseException:
        conn.transport.abort()
        raise
    lean.drop_handshake(conn)
    return conn


def status_error(ep: DeviceEndpoint, exc: InvalidStatus, auth_retry_delay: float) -> ConnectError:
    """The typed error for an upgrade refused with an HTTP status."""
    status = exc.response.status_code
    d = ep.device_id
    retry_after = _retry_after(exc.response.headers.get("Retry-After"))
    if status == 403 or (status == 401 and ep.secure):
        return AuthenticationFailed(
            f"{d}: device refused the credentials (HTTP {status}); check the user and "
            f"password for this device in the configuration; retrying only every "
            f"{auth_retry_delay / 60:g} min, since repeated bad logins can lock the "
            "device's account",
            device=d,
        )
    if status == 401:
        return HttpsOnly(
            f"{d}: device accepts HTTPS only (HTTP 401 on ws://); use wss:// in the device's url",
            device=d,
        )
    if status == 502:
        return DeviceRebooting(f"{d}: device is rebooting (HTTP 502); retrying", device=d)
    if status == 503:
        return RateLimited(
            f"{d}: device is limiting new connections (HTTP 503); retrying later",
            device=d,
            retry_after=retry_after,
        )
    return HandshakeFailed(
        f"{d}: WebSocket upgrade refused with HTTP {status}; is {ep.ws_url} the device's "
        "xAPI endpoint?",
        device=d,
        retry_after=retry_after,
    )


_open_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _opening_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _open_slots.get(loop)
    if slots is None:
        slots = _open_slots[loop] = asyncio.Semaphore(OPENS_IN_FLIGHT)
    return slots


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
