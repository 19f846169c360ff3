"""TLS for device links: shared contexts and certificate pinning.

The lean SSL protocol (one read buffer per thread, a bounded TLS BIO) is in :mod:`.lean`, with
the other memory trims.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from typing import Any

from .endpoint import DeviceEndpoint

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
