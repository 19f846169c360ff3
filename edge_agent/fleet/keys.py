"""Lease keys: what one ``edge_lease`` row stands for. Pure.

A device's key is its id (``room-4a``): its session and, when it is linked to a calendar
resource (``[[devices]] calendar``), that room's polling, which shares the room id. A
calendar-only room (``[[rooms]]``, or found in the Graph / Google directory) is leased on its
own under ``room:<room id>``. Device ids and room ids are ``[a-z0-9_-]+`` (config validation;
a discovered room's id is its mailbox's local part with every other character as ``-``), so a
key with ``:`` is never a device's, and the two namespaces cannot collide.

The outbox stream of a calendar-only room stays its room id (the envelope's ``data.room_id``):
only the lease key carries the prefix.
"""

from __future__ import annotations

ROOM_PREFIX = "room:"


def room_key(room_id: str) -> str:
    """The lease key of a calendar-only room."""
    return ROOM_PREFIX + room_id


def room_of(key: str) -> str | None:
    """The room id of a calendar-only room's lease key; ``None`` for a device's key."""
    return key[len(ROOM_PREFIX) :] if key.startswith(ROOM_PREFIX) else None


__all__ = ["ROOM_PREFIX", "room_key", "room_of"]
