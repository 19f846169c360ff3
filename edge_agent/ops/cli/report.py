"""``edge-agent report --since 7d [--room ID] [--format table|csv|json|html]``: what each room
saw next to what was booked, from the stored occupancy intervals and booking tracks.

Reads the database on a read-only connection, so it runs beside the agent (like ``outbox
dead-letter list``); in fleet mode (``[store] url``) the shared PostgreSQL, with every member's
rooms. Per room: hours booked, hours booked and used, ghost bookings, no-shows, walk-ins
(occupied with no booking), peak people. The HTML form is one self-contained page
(inline SVG and CSS, no external assets) with a chart per room: one row per day, booked time as
outlined bars, occupied time filled in, ghosts in red.

A booking's span is what the agent saw: from its start to its end (or its release), in the
agent's time, clipped to the report's range. Summing is pure (:func:`summarize`): the renderers
only format what it returns.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent.ops.cli.common import EX_FAIL, EX_OK, EX_USAGE, err, load_config_or_exit

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``2w`` -> a timedelta. Raises ValueError."""
    m = _SINCE.match(text.strip())
    if not m:
        raise ValueError(f"--since {text!r}: want a number and a unit (s, m, h, d, w), e.g. 7d")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


# --------------------------------------------------------------------------- summing (pure)

Span = tuple[float, float]


@dataclass(slots=True)
class BookingSpan:
    id: str
    title: str | None
    start: float
    end: float
    occupied_s: float
    ghost: bool
    released: bool
    no_show: bool


@dataclass(slots=True)
class RoomReport:
    room: str
    hours_booked: float = 0.0
    hours_booked_used: float = 0.0
    hours_occupied: float = 0.0
    bookings: int = 0
    ghost_bookings: int = 0
    released_bookings: int = 0
    no_shows: int = 0
    walk_ins: int = 0
    walk_in_hours: float = 0.0
    peak_people: int = 0
    # For the chart: (start, end) in unix seconds.
    booked: list[BookingSpan] = field(default_factory=list)
    occupied: list[Span] = field(default_factory=list)

    def numbers(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("booked", "occupied"):
            d.pop(k)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6)
        return d


def _clip(a: float, b: float, lo: float, hi: float) -> Span | None:
    a, b = max(a, lo), min(b, hi)
    return (a, b) if b > a else None


def _overlap(spans: Sequence[Span], a: float, b: float) -> float:
    return sum(max(0.0, min(b, s1) - max(a, s0)) for s0, s1 in spans)


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s0, s1 in sorted(spans):
        if out and s0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s1))
        else:
            out.append((s0, s1))
    return out


def summarize(
    intervals: Mapping[str, list[dict[str, Any]]],
    bookings: Mapping[str, list[dict[str, Any]]],
    lo: float,
    hi: float,
    room: str | None = None,
) -> list[RoomReport]:
    """Per room, the numbers of ``[lo, hi)`` (unix seconds); an open interval or booking
    reaches to ``hi``."""
    rooms = sorted(set(intervals) | set(bookings))
    if room is not None:
        rooms = [r for r in rooms if r == room]
    out = []
    for rid in rooms:
        rep = RoomReport(rid)
        occupied: list[Span] = []
        for iv in intervals.get(rid, []):
            end = hi if iv["end"] is None else float(iv["end"])
            span = _clip(float(iv["start"]), end, lo, hi)
            if span is None:
                continue
            if iv["state"] == "occupied":
                occupied.append(span)
                rep.peak_people = max(rep.peak_people, int(iv["people_max"]))
        occupied = _merge(occupied)
        rep.occupied = occupied
        rep.hours_occupied = sum(b - a for a, b in occupied) / 3600
        booked_spans: list[Span] = []
        for track in bookings.get(rid, []):
            end = hi if track.get("ended_at") is None else float(track["ended_at"])
            span = _clip(float(track["started_at"]), end, lo, hi)
            if span is None:
                continue
            used = _overlap(occupied, *span)
            finished = track.get("ended_at") is not None or bool(track.get("released"))
            no_show = finished and used == 0 and not track.get("seen")
            booking = track.get("booking") or {}
            rep.booked.append(
                BookingSpan(
                    id=str(track.get("booking_id")),
                    title=booking.get("title"),
                    start=span[0],
                    end=span[1],
                    occupied_s=used,
                    ghost=bool(track.get("ghost")),
                    released=bool(track.get("released")),
                    no_show=no_show,
                )
            )
            booked_spans.append(span)
            rep.bookings += 1
            rep.hours_booked += (span[1] - span[0]) / 3600
            rep.hours_booked_used += used / 3600
            rep.ghost_bookings += bool(track.get("ghost"))
            rep.released_bookings += bool(track.get("released"))
            rep.no_shows += no_show
        booked_spans = _merge(booked_spans)
        for a, b in occupied:
            if _overlap(booked_spans, a, b) == 0:
                rep.walk_ins += 1
                rep.walk_in_hours += (b - a) / 3600
        out.append(rep)
    return out


# --------------------------------------------------------------------------- rendering

COLUMNS = (
    "room",
    "hours_booked",
    "hours_booked_used",
    "ghost_bookings",
    "no_shows",
    "walk_ins",
    "peak_people",
    "bookings",
    "released_bookings",
    "hours_occupied",
    "walk_in_hours",
)


def render_json(reports: list[RoomReport], lo: float, hi: float) -> str:
    from edge_agent import jsoncodec
    from edge_agent.clock import utc_iso

    doc = {
        "since": utc_iso(datetime.fromtimestamp(lo, UTC)),
        "until": utc_iso(datetime.fromtimestamp(hi, UTC)),
        "rooms": [r.numbers() for r in reports],
    }
    return jsoncodec.dumps(doc) + "\n"


def render_csv(reports: list[RoomReport]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in reports:
        n = r.numbers()
        w.writerow([n[c] for c in COLUMNS])
    return buf.getvalue()


def render_table(reports: list[RoomReport]) -> str:
    headers = ["ROOM", "BOOKED h", "USED h", "GHOSTS", "NO-SHOWS", "WALK-INS", "PEAK"]
    rows = [
        [
            r.room,
            f"{r.hours_booked:.2f}",
            f"{r.hours_booked_used:.2f}",
            str(r.ghost_bookings),
            str(r.no_shows),
            str(r.walk_ins),
            str(r.peak_people),
        ]
        for r in reports
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}
.range{color:#667;margin-bottom:18px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 16px;
margin-bottom:18px}
table.n{border-collapse:collapse;margin-bottom:10px}
table.n td,table.n th{padding:2px 12px 2px 0;text-align:left}
table.n th{font-weight:500;color:#667}
.legend span{display:inline-block;margin-right:14px;color:#445}
.legend i{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
"""


def _chart(rep: RoomReport, lo: float, hi: float, zone: tzinfo) -> str:
    """One row per local day of the range; x is the time of day (the hours with data)."""
    first = datetime.fromtimestamp(lo, zone).date()
    last = datetime.fromtimestamp(max(lo, hi - 1), zone).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    spans = [(b.start, b.end) for b in rep.booked] + list(rep.occupied)
    hours = [
        datetime.fromtimestamp(t, zone).hour + datetime.fromtimestamp(t, zone).minute / 60
        for s in spans
        for t in s
    ]
    h0 = min(7.0, min(hours, default=7.0)) // 1
    h1 = -(-max(19.0, max(hours, default=19.0)) // 1)
    left, width, row_h, top = 92, 760, 26, 24
    height = top + row_h * len(days) + 10
    scale = width / ((h1 - h0) * 3600)

    def x_of(day_start: float, t: float) -> float:
        return left + max(0.0, min(width, (t - day_start - h0 * 3600) * scale))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 10}" height="{height}" '
        f'role="img" aria-label="{html.escape(rep.room)}: booked and occupied time per day">'
    ]
    for h in range(int(h0), int(h1) + 1):
        x = left + (h - h0) * 3600 * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 8}" '
                     'stroke="#eceff3"/>')  # fmt: skip
        if h % 2 == 0:
            parts.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="11" fill="#778" '
                         f'text-anchor="middle">{h:02d}:00</text>')  # fmt: skip
    for i, day in enumerate(days):
        y = top + i * row_h
        day_start = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
        parts.append(f'<text x="4" y="{y + 16}" font-size="12" fill="#334">'
                     f'{day:%a %d %b}</text>')  # fmt: skip
        day_end = day_start + 86400
        for b in rep.booked:
            if b.end <= day_start or b.start >= day_end:
                continue
            x0, x1 = x_of(day_start, b.start), x_of(day_start, b.end)
            colour = "#d64545" if b.ghost or b.no_show else "#4a7bd0"
            title = html.escape(
                f"{b.title or 'booking ' + b.id}: {b.occupied_s / 60:.0f} min used"
                + (" (ghost)" if b.ghost else "")
            )
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(1.5, x1 - x0):.1f}" height="18" '
                f'rx="3" fill="{colour}" fill-opacity="0.12" stroke="{colour}" '
                f'stroke-width="1.5"><title>{title}</title></rect>'
            )
        for a, b2 in rep.occupied:
            if b2 <= day_start or a >= day_end:
                continue
            x0, x1 = x_of(day_start, a), x_of(day_start, b2)
            parts.append(f'<rect x="{x0:.1f}" y="{y + 7}" width="{max(1.5, x1 - x0):.1f}" '
                         'height="8" rx="2" fill="#2f9e6b"/>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def render_html(reports: list[RoomReport], lo: float, hi: float, zone: tzinfo) -> str:
    def fmt(t: float) -> str:
        return f"{datetime.fromtimestamp(t, zone):%Y-%m-%d %H:%M}"

    body = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Room occupancy report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Rooms: booked and used</h1>",
        f'<div class="range">{fmt(lo)} to {fmt(hi)} ({html.escape(str(zone))})</div>',
    ]
    if not reports:
        body.append("<p>No occupancy recorded in this range.</p>")
    labels = {
        "hours_booked": "Hours booked",
        "hours_booked_used": "Booked and used",
        "ghost_bookings": "Ghost bookings",
        "no_shows": "No-shows",
        "walk_ins": "Walk-ins",
        "peak_people": "Peak people",
    }
    for rep in reports:
        n = rep.numbers()
        cells = "".join(f"<th>{labels[k]}</th>" for k in labels)
        values = "".join(
            f'<td data-key="{k}">{n[k]:.2f}</td>'
            if isinstance(n[k], float)
            else f'<td data-key="{k}">{n[k]}</td>'
            for k in labels
        )
        body += [
            f'<section data-room="{html.escape(rep.room)}"><h2>{html.escape(rep.room)}</h2>',
            f'<table class="n"><tr>{cells}</tr><tr>{values}</tr></table>',
            _chart(rep, lo, hi, zone),
            '<div class="legend"><span><i style="border:1.5px solid #4a7bd0;'
            'background:#4a7bd01f"></i>booked</span><span><i style="background:#2f9e6b">'
            '</i>occupied</span><span><i style="border:1.5px solid #d64545;'
            'background:#d645451f"></i>ghost / no-show</span></div></section>',
        ]
    body.append("</body></html>")
    return "\n".join(body) + "\n"


# --------------------------------------------------------------------------- the command


def cmd_report(args: argparse.Namespace) -> int:
    from edge_agent.clock import parse_utc
    from edge_agent.store import StoreError
    from edge_agent.store.occupancy import read_occupancy

    cfg = load_config_or_exit(args.config, require_sink=False)
    try:
        since = parse_since(args.since)
        until = parse_utc(args.until) if args.until else datetime.now(UTC)
        zone: tzinfo = ZoneInfo(args.time_zone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        err(f"edge-agent report: {exc}")
        return EX_USAGE
    hi = until.timestamp()
    lo = hi - since.total_seconds()
    if cfg.store.url is None and not cfg.store_path.exists():
        err(f"edge-agent: no store at {cfg.store_path} (has the agent run with this config?)")
        return EX_FAIL
    try:
        if cfg.store.url is not None:
            # Fleet mode: every member's rooms, from the shared PostgreSQL (read-only).
            import asyncio

            from edge_agent.ops.cli import pgstore

            history = asyncio.run(pgstore.occupancy(cfg, lo))
        else:
            history = read_occupancy(cfg.store_path, lo)
    except StoreError as exc:
        err(f"edge-agent report: {exc}")
        return EX_FAIL
    reports = summarize(history.intervals, history.bookings, lo, hi, args.room)
    if args.room is not None and not reports:
        err(f"edge-agent report: no occupancy recorded for room {args.room!r} in that range")
        return EX_FAIL
    if args.format == "json":
        text = render_json(reports, lo, hi)
    elif args.format == "csv":
        text = render_csv(reports)
    elif args.format == "html":
        text = render_html(reports, lo, hi, zone)
    else:
        text = render_table(reports)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return EX_OK
