"""Rendezvous hashing: balanced, agreed by everyone, and a change of members moves only its share."""

from __future__ import annotations

from edge_agent.fleet.assign import assign, owner

DEVICES = [f"room-{i}" for i in range(3000)]


def owners(members: list[str]) -> dict[str, str | None]:
    return {d: owner(d, members) for d in DEVICES}


def test_no_member_no_owner() -> None:
    assert owner("room-1", []) is None
    assert assign(["room-1"], []) == {}


def test_the_order_members_are_listed_in_does_not_matter() -> None:
    assert owners(["a", "b", "c"]) == owners(["c", "a", "b"])


def test_devices_spread_about_evenly() -> None:
    shares = assign(DEVICES, ["a", "b", "c"])
    assert sorted(shares) == ["a", "b", "c"]
    for devs in shares.values():
        assert 800 < len(devs) < 1200  # 1000 each on average
    assert sum(len(v) for v in shares.values()) == len(DEVICES)


def test_a_member_leaving_moves_only_its_own_devices() -> None:
    before = owners(["a", "b", "c"])
    after = owners(["a", "c"])
    moved = {d for d in DEVICES if before[d] != after[d]}
    assert moved == {d for d in DEVICES if before[d] == "b"}
    assert all(after[d] in ("a", "c") for d in moved)


def test_a_member_joining_takes_only_its_share_from_everyone() -> None:
    before = owners(["a", "b", "c"])
    after = owners(["a", "b", "c", "d"])
    moved = [d for d in DEVICES if before[d] != after[d]]
    assert all(after[d] == "d" for d in moved)  # nothing moves between the old members
    assert 550 < len(moved) < 950  # about a quarter
    took_from = {before[d] for d in moved}
    assert took_from == {"a", "b", "c"}
