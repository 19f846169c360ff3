"""A hostile HTTP/1.1 receiver on 127.0.0.1: huge, endless and trickling answers.

Raw asyncio streams, so the test controls every byte and can count what it sent::

    rx = HostileReceiver(answer=lambda body: "huge")   # or "endless", "trickle", "ok"
    await rx.start(); rx.url; ...; await rx.stop()
    rx.connections, rx.requests, rx.bytes_sent, rx.answers

- ``ok``: ``204`` with no body (keep-alive).
- ``huge``: ``200`` with ``Content-Length`` of ``HUGE`` bytes, written as fast as the client
  takes them.
- ``endless``: ``200``, chunked, chunks forever (a safety cap, ``ENDLESS_CAP``, stops writing
  but never sends the last chunk, so a client that reads to the end waits for good rather than
  eating the machine).
- ``trickle``: the status line and headers one byte every ``TRICKLE_S`` (a read never waits
  longer than that, so a per-read timeout never fires).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal

Answer = Literal["ok", "huge", "endless", "trickle"]

HUGE = 200 * 1024 * 1024
ENDLESS_CAP = 64 * 1024 * 1024
TRICKLE_S = 0.5
_CHUNK = b"x" * 65536


class HostileReceiver:
    def __init__(self, answer: Callable[[bytes], Answer]) -> None:
        self.answer = answer
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.bytes_sent = 0  # body bytes the kernel took from us (an upper bound of the read)
        self.answers: list[Answer] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length)
                self.requests += 1
                answer = self.answer(body)
                self.answers.append(answer)
                if answer == "ok":
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                    await writer.drain()
                    continue
                if answer == "trickle":
                    for byte in b"HTTP/1.1 204 No Content\r\n\r\n":
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(TRICKLE_S)
                    continue
                if answer == "huge":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
                    left = HUGE
                    while left > 0:
                        n = min(left, len(_CHUNK))
                        writer.write(_CHUNK[:n])
                        await writer.drain()
                        self.bytes_sent += n
                        left -= n
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while self.bytes_sent < ENDLESS_CAP:
                    writer.write(b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK))
                    await writer.drain()
                    self.bytes_sent += len(_CHUNK)
                await asyncio.Event().wait()  # never the last chunk
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # the client dropped the connection: what a bounded reader does
        except asyncio.CancelledError:
            # stop(): end quietly (asyncio's stream server reports a cancelled handler task
            # as an error in its callback)
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
