"""One HTTPS listener for an aiohttp application, with a certificate made at start or given."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web

from device_sim.tls import fingerprint_sha256, make_self_signed, server_context


class HttpsSite:
    """Serves ``app`` on ``host:port`` (0: a free port) over TLS.

    ``cert_pem`` is the serving certificate (self-signed for ``host``, made at ``start()``
    unless ``cert_file``/``key_file`` are given): clients trust it as their CA file.
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        tls: bool = True,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self._cert_file = cert_file
        self._key_file = key_file
        self.cert_pem: bytes = b""
        self.cert_sha256 = ""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` (no trailing slash)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Make or load the certificate, then listen. Returns once the port is bound."""
        ssl_context: ssl.SSLContext | None = None
        if self.tls:
            if self._cert_file and self._key_file:
                self.cert_pem = Path(self._cert_file).read_bytes()
                key_pem = Path(self._key_file).read_bytes()
            else:
                self.cert_pem, key_pem = await asyncio.to_thread(make_self_signed, [self.host])
            ssl_context = server_context(self.cert_pem, key_pem)
            self.cert_sha256 = fingerprint_sha256(self.cert_pem)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context)
        await site.start()
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        """Close the listener and every connection. Safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
