"""A tiny xAPI server for the handshake and TLS tests (the simulator covers the device logic).

It records every upgrade request it sees, so a test can assert that credentials never reached
a peer the client should not have trusted.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from edge_agent import jsoncodec


@dataclass
class FakeDevice:
    ssl_context: ssl.SSLContext | None = None
    username: str = "admin"
    password: str = "secret"
    status: int | None = None  # answer every upgrade with this HTTP status
    seen_headers: list[Headers] = field(default_factory=list)
    tls_handshakes: int = 0
    server: Server | None = None
    port: int = 0
    connections: list[ServerConnection] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"

    def authorization_seen(self) -> bool:
        return any(
            "Authorization" in h
            or any(p.startswith("auth-") for p in h.get_all("Sec-WebSocket-Protocol"))
            for h in self.seen_headers
        )

    async def start(self) -> None:
        self.server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            ssl=self.ssl_context,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.seen_headers.append(request.headers)
        if self.status is not None:
            return conn.respond(HTTPStatus(self.status), "no\n")
        import base64

        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return conn.respond(HTTPStatus.FORBIDDEN, "bad credentials\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        self.connections.append(conn)
        async for frame in conn:
            doc: dict[str, Any] = jsoncodec.loads(frame)
            method = doc.get("method")
            if method == "xFeedback/Subscribe":
                result: Any = {"Id": 1}
            elif method == "xGet":
                result = 42
            elif method == "xCommand/Echo":
                result = doc.get("params", {})
            else:
                result = {"status": "OK"}
            if "id" in doc:
                await conn.send(
                    jsoncodec.dumps({"jsonrpc": "2.0", "id": doc["id"], "result": result})
                )


async def serve_raw_tcp(handler: Any) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
