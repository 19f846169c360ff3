"""The memory trims on the device link (bench/bench_pipeline.py's RSS figure relies on them)
keep every byte: replies over TLS, fed to OpenSSL in slices, arrive whole, and the websocket
parser lets go of a large reply once it is read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge_agent.xapi import DeviceEndpoint, XapiClient, lean

from .fakedevice import FakeDevice


@pytest.fixture
async def client(tls_device: FakeDevice, ca_file: str) -> AsyncIterator[XapiClient]:
    client = XapiClient(
        DeviceEndpoint(
            "room-4a", url=tls_device.url, username="admin", password="secret", ca_file=ca_file
        ),
        open_timeout=5.0,
        request_timeout=10.0,
    )
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(5.0)
        yield client
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def echo(client: XapiClient, text: str) -> Any:
    return (await client.command("Echo", Text=text))["Text"]


async def test_replies_of_every_size_arrive_whole_over_tls(client: XapiClient) -> None:
    conn = client._conn
    assert conn is not None
    ssl_protocol = conn.transport._ssl_protocol  # type: ignore[attr-defined]
    assert isinstance(ssl_protocol, lean.LeanSSLProtocol)
    # Around one BIO slice, one TLS record (16 KiB) and far beyond, with text in which a
    # shifted, repeated or dropped slice shows.
    for size in (1, lean.BIO_FEED - 1, lean.BIO_FEED, lean.BIO_FEED + 1, 16_385, 300_001):
        text = "".join(chr(0x41 + i % 26) for i in range(size))
        assert await echo(client, text) == text
    # Requests pipelined, replies back to back (whatever socket reads they arrive in).
    texts = [f"{i:05d}" * 700 for i in range(40)]
    assert list(await asyncio.gather(*(echo(client, t) for t in texts))) == texts


async def test_the_parser_lets_go_of_a_large_reply(client: XapiClient) -> None:
    text = "x" * 50_000
    assert await echo(client, text) == text
    conn = client._conn
    assert conn is not None
    # websockets' sans-I/O parser is a chain of generators suspended until the next frame;
    # one of them has the last frame it parsed in its local ``frame``.
    kept = []
    gen = conn.protocol.parser
    while gen is not None and getattr(gen, "gi_frame", None) is not None:
        frame = gen.gi_frame.f_locals.get("frame")
        if frame is not None:
            kept.append(len(frame.data))
        gen = gen.gi_yieldfrom
    assert kept, "websockets' parser changed: this test no longer sees its frames"
    assert max(kept) < 1_000


def test_lean_ssl_protocol_keeps_sslprotocols_defaults() -> None:
    """Slots must not hide SSLProtocol's class-level defaults: a connection lost before its
    handshake (or shutdown) reads them."""
    import asyncio
    import ssl

    from edge_agent.xapi.lean import LeanSSLProtocol

    loop = asyncio.new_event_loop()
    try:
        proto = LeanSSLProtocol(
            loop,
            asyncio.Protocol(),
            ssl.create_default_context(),
            None,
            server_side=False,
            server_hostname="device.invalid",
        )
        assert proto._shutdown_timeout_handle is None
        assert proto._handshake_timeout_handle is None
        proto.connection_lost(None)  # raised AttributeError before the fix
    finally:
        loop.close()


async def test_every_trim_applies_on_the_installed_websockets(client: XapiClient) -> None:
    """The trims degrade to no-ops when websockets changes; this says when one stopped applying
    (then bench/bench_connections.py's KiB per connection goes up)."""
    import logging

    conn = client._conn
    assert isinstance(conn, lean.LeanConnection)
    assert type(conn.drain_waiters) is list
    assert conn.logger is logging.getLogger("websockets.client")
    assert conn.protocol.logger is conn.logger
    assert conn.request is None  # the upgrade request carried the credentials
    assert conn.response is not None and len(conn.response.headers) == 0
    assert type(conn.recv_messages.frames.queue) is lean.FrameList
    assert lean.lean_tls_supported(asyncio.get_running_loop())
    # One read takes at most a TLS record: what a waiting reader piles up per read is bounded.
    ssl_protocol = conn.transport._ssl_protocol  # type: ignore[attr-defined]
    assert isinstance(ssl_protocol, lean.LeanSSLProtocol)
    assert len(ssl_protocol.get_buffer(-1)) == lean.READ_BUFFER_SIZE == 16 * 1024
    # ...and the link still works after all of them.
    assert await echo(client, "still here") == "still here"


async def test_lean_connection_serves_websockets_public_connect(plain_device: FakeDevice) -> None:
    """LeanConnection takes ClientConnection's arguments: websockets' ``create_connection=``."""
    from websockets.asyncio.client import connect

    async with connect(
        plain_device.url,
        create_connection=lean.LeanConnection,
        additional_headers={"Authorization": "Basic YWRtaW46c2VjcmV0"},
        compression=None,
    ) as conn:
        assert isinstance(conn, lean.LeanConnection)
        assert type(conn.drain_waiters) is list
        await conn.send('{"jsonrpc": "2.0", "id": 1, "method": "xGet", "params": {"Path": []}}')
        assert await conn.recv()


def test_drop_handshake_tolerates_a_connection_without_a_response() -> None:
    class Bare:
        request: object = object()
        response = None

    bare = Bare()
    lean.drop_handshake(bare)  # type: ignore[arg-type]
    assert bare.request is None


async def test_without_the_lean_tls_protocol_the_link_still_works(
    tls_device: FakeDevice, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a newer asyncio without SSLProtocol's private members gets: asyncio's own."""
    monkeypatch.setattr(lean, "_SSLPROTOCOL_FITS", False)
    assert not lean.lean_tls_supported(asyncio.get_running_loop())
    client = XapiClient(
        DeviceEndpoint(
            "room-4a", url=tls_device.url, username="admin", password="secret", ca_file=ca_file
        ),
        open_timeout=5.0,
    )
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(5.0)
        conn = client._conn
        assert conn is not None
        ssl_protocol = conn.transport._ssl_protocol  # type: ignore[attr-defined]
        assert not isinstance(ssl_protocol, lean.LeanSSLProtocol)
        assert await echo(client, "y" * 20_000) == "y" * 20_000
    finally:
        await client.close()
        await task


def test_frame_list_does_what_websockets_asks_of_a_deque() -> None:
    import collections

    items, ref = lean.FrameList(), collections.deque[str]()
    for q in (items, ref):
        q.append("a")
        q.append("b")
        q.extendleft(reversed(["x", "y"]))  # websockets' put_back: x, y back in front, in order
        q.extendleft(iter(["p", "q"]))
    assert list(items) == list(ref) == ["q", "p", "x", "y", "a", "b"]
    assert [items.popleft() for _ in range(len(items))] == [ref.popleft() for _ in range(6)]
    assert not items and len(items) == 0
    with pytest.raises(IndexError):
        items.popleft()
