"""The one bounded GET of the calendar sources: a whole answer within a timeout, a body cap.

Graph and Google answers are read the same way: streamed, refused past ``max_body`` bytes (an
error, never a silently truncated listing, which would read as deletions), the whole answer
within ``timeout_s`` (a slow trickle counts as unreachable). Parsing stays with each source.
"""

from __future__ import annotations

import asyncio

import httpx

__all__ = ["TOO_LARGE", "bounded_get"]

TOO_LARGE = "<body too large>"  # the body placeholder for an answer above max_body


async def bounded_get(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    *,
    timeout_s: float,
    max_body: int,
    params: dict[str, str] | None = None,
) -> tuple[int, httpx.Headers, str]:
    """``(status, headers, body)``; body is :data:`TOO_LARGE` past ``max_body`` and ``"{}"`` for
    an empty 200. Raises ``httpx.TransportError`` or ``TimeoutError``."""
    async with asyncio.timeout(timeout_s):
        async with http.stream("GET", url, headers=headers, params=params) as resp:
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                return resp.status_code, resp.headers, TOO_LARGE
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_body:
                    return resp.status_code, resp.headers, TOO_LARGE
                chunks.append(chunk)
            if resp.status_code == 200 and size == 0:
                return 200, resp.headers, "{}"
            return resp.status_code, resp.headers, b"".join(chunks).decode("utf-8", "replace")
