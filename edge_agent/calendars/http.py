"""The one bounded request of the calendar sources: a whole answer within a timeout, a body cap.

Graph and Google answers (listings, bookings, subscriptions, watch channels) are all read the
same way, through the agent's one bounded reader (:func:`edge_agent.httpclient.request_bounded`:
streamed, one deadline on the whole exchange, decoded here since they are JSON). On top of it
the calendar rule: an answer past ``max_body`` bytes is refused (:data:`TOO_LARGE`), never a
silently truncated listing, which would read as deletions. Parsing stays with each source.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from edge_agent.httpclient import request_bounded

__all__ = ["TOO_LARGE", "bounded_get", "bounded_request"]

TOO_LARGE = "<body too large>"  # the body placeholder for an answer above max_body


async def bounded_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_body: int,
    params: Mapping[str, str] | None = None,
    content: bytes | None = None,
) -> tuple[int, httpx.Headers, str]:
    """``(status, headers, body)``; body is :data:`TOO_LARGE` past ``max_body`` and ``"{}"`` for
    an empty 200. Raises ``httpx.TransportError`` (``httpx.TimeoutException`` past
    ``timeout_s``: a slow trickle counts as unreachable)."""
    resp = await request_bounded(
        http,
        method,
        url,
        deadline_s=timeout_s,
        content=content,
        headers=headers,
        params=params,
        max_bytes=max_body,
        decoded=True,
    )
    if resp.truncated:
        return resp.status, resp.headers, TOO_LARGE
    if resp.status == 200 and not resp.body:
        return 200, resp.headers, "{}"
    return resp.status, resp.headers, resp.body.decode("utf-8", "replace")


async def bounded_get(
    http: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_body: int,
    params: Mapping[str, str] | None = None,
) -> tuple[int, httpx.Headers, str]:
    """:func:`bounded_request` with ``GET``."""
    return await bounded_request(
        http, "GET", url, headers, timeout_s=timeout_s, max_body=max_body, params=params
    )
