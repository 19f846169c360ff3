"""Every memory trim on websockets' and asyncio's per-connection internals, in one place.

At 1,000 device links, what each connection keeps is the agent's footprint:
``bench/bench_connections.py --devices 1000`` prints the RSS per connection (~38 KiB with the
trims below; DESIGN.md has the untrimmed figure, ~310 KiB per wss link). Each trim relies on
something that is not websockets' (or asyncio's) documented API, so each one checks that the
thing it trims is still there, in the shape it expects, and does nothing otherwise: a newer
websockets costs memory, never correctness (that is why the dependency has no upper bound).
``tests/xapi/test_lean.py`` fails when a trim silently stopped applying.

The trims:

- :class:`LeanConnection`, a :class:`~websockets.asyncio.client.ClientConnection` subclass of
  the kind websockets' public ``create_connection=`` extension point takes:

  * *drain waiters*: websockets keeps them in a ``deque``, which allocates a 0.7 KiB block up
    front; it only appends, removes and iterates them, so a list serves.
  * *frame queue*: the receive queue (``recv_messages.frames``) keeps its frames in a
    ``deque`` too (~0.7 KiB up front, made when the transport connects): a
    :class:`FrameList` does the four things it asks of it (``append``, ``popleft``,
    ``extendleft``, ``len``) on a few dozen frames at most.
  * *logger*: websockets gives each connection a ``LoggerAdapter`` holding a weakref proxy
    (~0.4 KiB); its debug logs lose the connection's repr (ours carry the device id).
  * *frame copy* (``process_event``): the sans-I/O parser is a generator whose suspended frame
    keeps the previous ``Frame`` until the next one arrives: on a quiet device, the last
    ``Bookings List`` reply (~1 KiB a booking) for up to a ping interval, across the whole
    fleet after every (re)list. The assembler gets a copy of each frame with a payload; the
    parser's own is emptied (``test_the_parser_lets_go_of_a_large_reply``).

- :func:`drop_handshake`: neither the upgrade request (it carries the credentials) nor the
  response headers are needed once open: ~3 KiB per connection. The headers are cleared in
  place because the parser's suspended frame keeps the response for the connection's life.

- :class:`LeanSSLProtocol`: asyncio's ``SSLProtocol`` gives every connection its own 256 KiB
  read buffer. On a selector loop the buffer is filled by ``recv_into`` and copied into the TLS
  BIO in the same callback, so one buffer per thread serves every connection. It is also
  smaller, :data:`READ_BUFFER_SIZE` (one TLS record): everything one read brings is decrypted
  and parsed into frames at once, before websockets can pause the transport, so the read size
  bounds what a link whose reader waits (:mod:`.budget`) piles up: ~40 flood frames a read, not
  ~600 (a paused link's kernel buffer holds far more than 256 KiB). The same
  reasoning bounds the TLS BIO: OpenSSL's memory BIO grows its buffer to the largest write it
  was given and never shrinks it, so one 16 KiB read (a ``Bookings List`` reply) would pin
  ~21 KiB per connection for good; the lean protocol feeds the BIO :data:`BIO_FEED` bytes at a
  time and lets OpenSSL drain it in between. Two differences from asyncio's protocol, both
  harmless here: each slice costs a ``_do_read`` and its ``SSLWantReadError`` (~3x the CPU per
  byte received, small next to parsing the JSON), and an application that closes the transport
  from inside ``data_received`` is not given the rest of that socket read (websockets does so
  only on a protocol failure, when the rest is of no use). Its slots take the 35 attributes
  ``SSLProtocol`` sets past CPython's 30-key limit for key-sharing instance dicts (1.5 KiB ->
  ~0.3 KiB per connection). Not part of websockets at all: asyncio's ``create_connection``
  takes no SSL protocol factory, so :mod:`.connect` calls it with this one as the protocol.

What is not trimmed, and why: permessage-deflate is simply not offered (``extensions`` are not
negotiated: ~33 KiB per connection, DESIGN.md); that is websockets' public API (no hack).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from asyncio import sslproto
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame

READ_BUFFER_SIZE = 16 * 1024
"""Bytes one socket read takes (asyncio's SSLProtocol: 256 KiB): a full TLS record's payload."""
# What one write into a connection's incoming BIO may carry. OpenSSL drains the BIO into its own
# record buffer (released when idle: Python sets SSL_MODE_RELEASE_BUFFERS) before the next write,
# so this bounds what every idle connection keeps: about 4/3 of it.
BIO_FEED = 1024

FRAME_KEEP = 256
"""Bytes: a frame payload up to this size is not worth a copy of the frame."""

_WEBSOCKETS_LOGGER = logging.getLogger("websockets.client")


class LeanConnection(ClientConnection):
    """websockets' client connection, minus a few per-connection allocations (module docstring).

    Takes exactly :class:`~websockets.asyncio.client.ClientConnection`'s arguments, so it also
    serves as ``websockets.asyncio.client.connect(..., create_connection=LeanConnection)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(getattr(self, "drain_waiters", None)) is collections.deque and not len(
            self.drain_waiters
        ):
            self.drain_waiters = []  # type: ignore[assignment]
        if hasattr(self.protocol, "logger"):
            self.logger = self.protocol.logger = _WEBSOCKETS_LOGGER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        frames = getattr(getattr(self, "recv_messages", None), "frames", None)
        queue = getattr(frames, "queue", None)
        if type(queue) is collections.deque and not len(queue):
            frames.queue = FrameList()  # type: ignore[union-attr]

    def process_event(self, event: Any) -> None:
        if type(event) is Frame and len(event.data) > FRAME_KEEP:
            frame = event
            event = Frame(frame.opcode, frame.data, frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)
            frame.data = b""
        super().process_event(event)


class FrameList(list[Any]):
    """The part of ``collections.deque`` websockets' frame queue uses, on a list (no fixed
    block up front). The queue holds at most ``max_queue`` frames plus one socket read's."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        # As deque.extendleft: each item goes in front in turn, so they end up reversed.
        self[:0] = list(items)[::-1]


def drop_handshake(conn: ClientConnection) -> None:
    """Forget the upgrade request and the response's headers once the link is open."""
    if hasattr(conn, "request"):
        conn.request = None
    headers = getattr(conn.response, "headers", None)
    clear = getattr(headers, "clear", None)
    if callable(clear):
        clear()


# --- TLS ---------------------------------------------------------------------------------------

_local = threading.local()


def _shared_buffer() -> tuple[bytearray, memoryview]:
    shared: tuple[bytearray, memoryview] | None = getattr(_local, "buffer", None)
    if shared is None:
        buf = bytearray(READ_BUFFER_SIZE)
        shared = (buf, memoryview(buf))
        _local.buffer = shared
    return shared


def _sslprotocol_fits() -> bool:
    """Whether asyncio's SSLProtocol still has the private members the lean one relies on."""
    cls = sslproto.SSLProtocol
    state = getattr(sslproto, "SSLProtocolState", None)
    return state is not None and all(
        hasattr(cls, name)
        for name in ("buffer_updated", "get_buffer", "_do_handshake", "_do_read", "_do_flush")
    )


_SSLPROTOCOL_FITS = _sslprotocol_fits()


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSL protocol reading into one per-thread buffer instead of one per connection.

    Only used on selector loops, where ``get_buffer`` / ``recv_into`` / ``buffer_updated``
    run back to back in one callback (a proactor loop keeps the buffer across an overlapped
    read, so it keeps asyncio's own protocol).
    """

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
        states: Any = sslproto.SSLProtocolState
        view = self._ssl_buffer_view
        for start in range(0, nbytes, BIO_FEED):
            proto._incoming.write(view[start : min(start + BIO_FEED, nbytes)])
            state = proto._state
            if state is states.DO_HANDSHAKE:
                proto._do_handshake()
            elif state is states.WRAPPED:
                proto._do_read()
            elif state is states.FLUSHING:
                proto._do_flush()
            elif state is states.SHUTDOWN:
                proto._do_shutdown()


def lean_tls_supported(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether :class:`LeanSSLProtocol` may serve on ``loop`` (a selector loop, this asyncio)."""
    return _SSLPROTOCOL_FITS and isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
