"""Paging a ``Bookings List``: caps, and a page that repeats (issue 10, item 5)."""

from __future__ import annotations

from edge_agent.bookings.models import (
    MAX_LIST_PAGES,
    MAX_LIST_ROWS,
    ListPage,
    join_pages,
    page_cap_reached,
    parse_list_result,
    repeats,
)

from .helpers import booking, list_entry


def test_a_page_equal_to_the_previous_one_repeats() -> None:
    raw = {"ResultInfo": {"TotalRows": "1000000000"}, "Booking": [list_entry(Id="1")]}
    first, again = parse_list_result(raw), parse_list_result(raw)
    assert repeats(again, first)
    other = parse_list_result({"Booking": [list_entry(Id="2")]})
    assert not repeats(other, first)
    assert not repeats(ListPage(bookings=()), ListPage(bookings=()))  # an empty page ends paging


def test_caps_on_pages_and_rows() -> None:
    one = ListPage(bookings=(booking(),), total_rows=10**9, received=1)
    assert page_cap_reached([one]) is None
    assert "page cap" in (page_cap_reached([one] * MAX_LIST_PAGES) or "")
    wide = ListPage(bookings=(), total_rows=10**9, received=MAX_LIST_ROWS)
    assert "row cap" in (page_cap_reached([wide]) or "")


def test_a_list_cut_short_is_incomplete() -> None:
    page = ListPage(bookings=(booking(),), total_rows=10**9, received=1)
    assert join_pages([page]).complete
    cut = join_pages([page], cut_short="page cap reached")
    assert not cut.complete and cut.cut_short == "page cap reached"
    assert cut.bookings == page.bookings
