"""Membership and device leases in PostgreSQL: the only module that writes those two tables.

Every time is the database's (``clock_timestamp()``): members on different hosts share no
other clock. A lease is taken only when it is free (never held, released, or expired), and
taking it increments its fencing token; renewing keeps the token and works only while the
lease is still this member's and unexpired, so a member that lost it (frozen, cut off) must
take it again, with a new token, before it may commit for the device again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from edge_agent import jsoncodec

Conn = psycopg.AsyncConnection[Any]

HEARTBEAT = (
    "INSERT INTO edge_member (member_id, started_at, last_seen, info) "
    "VALUES (%s, clock_timestamp(), clock_timestamp(), %s::jsonb) "
    "ON CONFLICT (member_id) DO UPDATE SET last_seen = excluded.last_seen, info = excluded.info"
)
LIVE_MEMBERS = (
    "SELECT member_id FROM edge_member "
    "WHERE last_seen > clock_timestamp() - make_interval(secs => %s) ORDER BY member_id"
)
LEAVE = "DELETE FROM edge_member WHERE member_id = %s"
ACQUIRE = (
    "INSERT INTO edge_lease AS l (device_id, member_id, token, acquired_at, expires_at) "
    "SELECT d, %s, 1, clock_timestamp(), clock_timestamp() + make_interval(secs => %s) "
    "FROM unnest(%s::text[]) AS u(d) ORDER BY d "
    "ON CONFLICT (device_id) DO UPDATE SET member_id = excluded.member_id, "
    "token = l.token + 1, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at "
    "WHERE l.member_id IS NULL OR l.expires_at <= clock_timestamp() RETURNING l.device_id, l.token"
)
RENEW = (
    "UPDATE edge_lease l SET expires_at = clock_timestamp() + make_interval(secs => %s) "
    "FROM unnest(%s::text[], %s::bigint[]) AS u(device_id, token) "
    "WHERE l.device_id = u.device_id AND l.token = u.token AND l.member_id = %s "
    "AND l.expires_at > clock_timestamp() RETURNING l.device_id"
)
RELEASE = (
    "UPDATE edge_lease SET member_id = NULL, expires_at = clock_timestamp() "
    "WHERE member_id = %s AND device_id = ANY(%s)"
)
RELEASE_ALL = (
    "UPDATE edge_lease SET member_id = NULL, expires_at = clock_timestamp() WHERE member_id = %s"
)
# Transactions of members whose heartbeat is older than a lease (frozen, cut off): ended, so
# the lease rows they hold locked (the fence's FOR SHARE) can be taken over. The server's
# idle_in_transaction_session_timeout does not cover a client frozen in the middle of a
# pipeline (the backend is not idle then), so the takeover has to end them itself.
END_STALE_TRANSACTIONS = (
    "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a JOIN edge_member m "
    "ON a.application_name = 'edge-agent ' || m.member_id "
    "WHERE m.last_seen <= clock_timestamp() - make_interval(secs => %s) "
    "AND a.datname = current_database() AND a.state <> 'idle' AND a.pid <> pg_backend_pid()"
)
MEMBERS = (
    "SELECT member_id, extract(epoch FROM clock_timestamp() - last_seen), "
    "extract(epoch FROM clock_timestamp() - started_at), info FROM edge_member ORDER BY member_id"
)
LEASES = (
    "SELECT device_id, member_id, token, extract(epoch FROM clock_timestamp() - acquired_at), "
    "extract(epoch FROM expires_at - clock_timestamp()) FROM edge_lease "
    "WHERE member_id IS NOT NULL ORDER BY device_id"
)


async def heartbeat(conn: Conn, member_id: str, info: Mapping[str, Any]) -> None:
    await conn.execute(HEARTBEAT, (member_id, jsoncodec.dumps(dict(info))))


async def live_members(conn: Conn, lease_s: float) -> list[str]:
    """Members whose heartbeat is younger than one lease."""
    rows = await (await conn.execute(LIVE_MEMBERS, (lease_s,))).fetchall()
    return [str(r[0]) for r in rows]


async def acquire(
    conn: Conn, member_id: str, devices: Sequence[str], lease_s: float, lock_timeout_s: float
) -> dict[str, int]:
    """Take the leases of ``devices`` that are free; returns ``{device: new fencing token}``.

    A lease row another member's commit holds locked (``FOR SHARE``) is waited for at most
    ``lock_timeout_s`` (a frozen member's transaction is ended by the server's
    ``idle_in_transaction_session_timeout``); past it nothing is taken this time.
    """
    if not devices:
        return {}
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",)
        )
        rows = await (await conn.execute(ACQUIRE, (member_id, lease_s, sorted(devices)))).fetchall()
    return {str(d): int(t) for d, t in rows}


async def end_stale_transactions(conn: Conn, lease_s: float) -> int:
    """End the open transactions of members not live any more; returns how many."""
    row = await (await conn.execute(END_STALE_TRANSACTIONS, (lease_s,))).fetchone()
    return 0 if row is None else int(row[0])


async def renew(conn: Conn, member_id: str, held: Mapping[str, int], lease_s: float) -> set[str]:
    """Extend the leases ``held`` (device -> token); returns the devices still held."""
    if not held:
        return set()
    devices = list(held)
    rows = await (
        await conn.execute(RENEW, (lease_s, devices, [held[d] for d in devices], member_id))
    ).fetchall()
    return {str(r[0]) for r in rows}


async def release(conn: Conn, member_id: str, devices: Sequence[str]) -> None:
    """Hand ``devices`` over at once (their next owner need not wait for the lease to run out)."""
    if devices:
        await conn.execute(RELEASE, (member_id, list(devices)))


async def leave(conn: Conn, member_id: str) -> None:
    """Release every lease of ``member_id`` and remove it from the members."""
    async with conn.transaction():
        await conn.execute(RELEASE_ALL, (member_id,))
        await conn.execute(LEAVE, (member_id,))


@dataclass(frozen=True, slots=True)
class MemberRow:
    member_id: str
    last_seen_age_s: float
    up_s: float
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeaseRow:
    device_id: str
    member_id: str
    token: int
    held_s: float
    expires_in_s: float


async def listing(conn: Conn) -> tuple[list[MemberRow], list[LeaseRow]]:
    """Every member and every held lease, with ages (for ``/v1/fleet`` and ``status``)."""
    members = [
        MemberRow(str(m), float(seen), float(up), dict(info or {}))
        for m, seen, up, info in await (await conn.execute(MEMBERS)).fetchall()
    ]
    leases = [
        LeaseRow(str(d), str(m), int(t), float(held), float(exp))
        for d, m, t, held, exp in await (await conn.execute(LEASES)).fetchall()
    ]
    return members, leases


__all__ = [
    "LeaseRow",
    "MemberRow",
    "acquire",
    "end_stale_transactions",
    "heartbeat",
    "leave",
    "listing",
    "live_members",
    "release",
    "renew",
]
