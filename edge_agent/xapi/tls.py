"""TLS for device links: shared contexts, certificate pinning, a lean SSL protocol.

Memory is the reason for :class:`LeanSSLProtocol`: asyncio's ``SSLProtocol`` gives every
connection its own 256 KiB read buffer (DESIGN.md: ~310 KiB per wss connection). On a selector
loop the buffer is filled by ``recv_into`` and copied into the TLS BIO in the same callback, so
one buffer per thread serves every connection.

The same reasoning bounds the TLS BIO: OpenSSL's memory BIO grows its buffer to the largest
write it was given and never shrinks it, so one 16 KiB read (a ``Bookings List`` reply) would
pin ~21 KiB per connection for good. The lean protocol feeds the BIO :data:`BIO_FEED` bytes at
a time and lets OpenSSL drain it in between. Two differences from asyncio's protocol, both
harmless here: each slice costs a ``_do_read`` and its ``SSLWantReadError`` (~3x the CPU per
byte received, small next to parsing the JSON), and an application that closes the transport
from inside ``data_received`` is not given the rest of that socket read (websockets does so
only on a protocol failure, when the rest is of no use).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from asyncio import sslproto
from asyncio.sslproto import SSLProtocolState as _State
from typing import Any

from .endpoint import DeviceEndpoint

READ_BUFFER_SIZE = 256 * 1024
# What one write into a connection's incoming BIO may carry. OpenSSL drains the BIO into its own
# record buffer (released when idle: Python sets SSL_MODE_RELEASE_BUFFERS) before the next write,
# so this bounds what every idle connection keeps: about 4/3 of it.
BIO_FEED = 1024

_local = threading.local()
_contexts: dict[tuple[str, str | None], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def context_for(endpoint: DeviceEndpoint) -> ssl.SSLContext:
    """The client context for ``endpoint``'s trust mode, shared by every device that uses it.

    One context per mode and CA file: loading the system CA store costs hundreds of KiB, and
    a context per device would multiply that by the fleet.
    """
    if endpoint.fingerprint is not None:
        key: tuple[str, str | None] = ("pinned", None)
    elif endpoint.insecure:
        key = ("insecure", None)
    else:
        key = ("verified", endpoint.ca_file)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _make_context(*key)
            _contexts[key] = ctx
        return ctx


def _make_context(mode: str, ca_file: str | None) -> ssl.SSLContext:
    if mode == "verified":
        return ssl.create_default_context(cafile=ca_file)
    # Pinned: the chain is not verified (self-signed devices); the fingerprint, checked
    # before any credentials are written, is the trust. Insecure: nothing is checked.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_fingerprint(ssl_object: Any) -> str:
    """SHA-256 of the peer's DER certificate, as 64 lower-case hex digits ("" if none)."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else ""


def _shared_buffer() -> tuple[bytearray, memoryview]:
    shared: tuple[bytearray, memoryview] | None = getattr(_local, "buffer", None)
    if shared is None:
        buf = bytearray(READ_BUFFER_SIZE)
        shared = (buf, memoryview(buf))
        _local.buffer = shared
    return shared


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSL protocol reading into one per-thread buffer instead of one per connection.

    Only used on selector loops, where ``get_buffer`` / ``recv_into`` / ``buffer_updated``
    run back to back in one callback (a proactor loop keeps the buffer across an overlapped
    read, so it keeps asyncio's own protocol).
    """

    # SSLProtocol sets 35 attributes, past CPython's 30-key limit for key-sharing instance
    # dicts, so each connection got a 1.5 KiB dict; with these in slots it is ~0.3 KiB.
    __slots__ = (
        "_handshake_start_time",
        "_handshake_timeout_handle",
        "_shutdown_timeout_handle",
        "_ssl_buffer",
        "_ssl_buffer_view",
        "_write_backlog",
    )

    # get_buffer() allocates a buffer of its own when the shared one is smaller than this.
    max_size = READ_BUFFER_SIZE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A slot hides SSLProtocol's class-level default (None) for these three: without a value
        # of their own, connection_lost() before a handshake or shutdown raises AttributeError.
        self._handshake_start_time = None
        self._handshake_timeout_handle = None
        self._shutdown_timeout_handle = None
        super().__init__(*args, **kwargs)
        self._ssl_buffer, self._ssl_buffer_view = _shared_buffer()
        # A deque allocates a 64-slot block up front (~0.7 KiB); the backlog is almost always
        # empty and SSLProtocol only appends, indexes [0], deletes [0] and clears it.
        self._write_backlog = []  # type: ignore[assignment]

    def buffer_updated(self, nbytes: int) -> None:
        # SSLProtocol.buffer_updated, with the bytes written to the BIO in BIO_FEED slices (see
        # the module's docstring), each followed by the same dispatch on the protocol's state.
        proto: Any = self  # SSLProtocol's private members are not in typeshed
        view = self._ssl_buffer_view
        for start in range(0, nbytes, BIO_FEED):
            proto._incoming.write(view[start : min(start + BIO_FEED, nbytes)])
            state = proto._state
            if state is _State.DO_HANDSHAKE:
                proto._do_handshake()
            elif state is _State.WRAPPED:
                proto._do_read()
            elif state is _State.FLUSHING:
                proto._do_flush()
            elif state is _State.SHUTDOWN:
                proto._do_shutdown()


def lean_buffers_supported(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
