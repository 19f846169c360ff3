"""Which live member owns which device: rendezvous (highest random weight) hashing. Pure.

Every member computes the same answer from the same member list, with no coordination: a
device goes to the member with the highest ``weight(member, device)``. When a member leaves,
only its devices move (each to its own second choice); when one joins, it takes only the
devices for which it now has the highest weight, about ``1/n`` of them, from every member
alike. A modulo-n hash would move almost everything instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, device: str) -> int:
    """The pseudo-random weight of ``member`` for ``device`` (stable across hosts and runs)."""
    digest = hashlib.blake2b(member.encode() + b"\x00" + device.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(device: str, members: Iterable[str]) -> str | None:
    """The member that should own ``device``, or ``None`` when there is no live member.

    Ties (practically impossible with 64-bit weights) go to the smaller member id, so every
    member still agrees.
    """
    best: tuple[int, str] | None = None
    for m in members:
        key = (weight(m, device), m)
        if best is None or key[0] > best[0] or (key[0] == best[0] and m < best[1]):
            best = key
    return None if best is None else best[1]


def assign(devices: Iterable[str], members: Iterable[str]) -> dict[str, list[str]]:
    """``{member: [devices it should own]}`` for every member (possibly with no device)."""
    live = sorted(set(members))
    out: dict[str, list[str]] = {m: [] for m in live}
    for d in devices:
        m = owner(d, live)
        if m is not None:
            out[m].append(d)
    return out


__all__ = ["assign", "owner", "weight"]
