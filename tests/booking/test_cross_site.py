"""A page on another site cannot book a room through a browser: the form POST a page can send
without a CORS preflight is refused and nothing reaches the device. (Debian's chromium is not
installed on this machine, so the browser is played by its exact request.)"""

from __future__ import annotations

import httpx

from tests.e2e.harness import of_type


async def test_cross_site_form_post_books_nothing(booked, receiver) -> None:
    fleet, running, http = await booked()
    dev = fleet.devices[0]
    assert running.agent.api is not None
    url = f"{running.agent.api.url}/v1/rooms/{dev.device_id}/bookings"
    form = b"title=Pwned&duration_min=60"
    # What <form method=post action=http://127.0.0.1:PORT/...> on evil.example sends: no token,
    # a form content type, the page's Origin, Sec-Fetch-Site cross-site.
    browser = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": "http://evil.example",
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
    }
    async with httpx.AsyncClient(timeout=5) as anonymous:
        r = await anonymous.post(url, content=form, headers=browser)
        assert r.status_code == 403
        # the same after DNS rebinding (Host is the attacker's name): refused before the route
        r = await anonymous.post(url, content=form, headers={**browser, "Host": "evil.example"})
        assert r.status_code == 421
        # even without the browser's Origin headers: no token
        r = await anonymous.post(
            url, content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code == 401
    # and a client holding the token still cannot send a form
    r = await http.post(
        url, content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    assert dev.calendar.bookings() == []
    assert not of_type(receiver.events, "booking.requested")
    store = running.agent.store
    assert store is not None and await store.load_pending() == []
