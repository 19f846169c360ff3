"""The status page at ``GET /`` of the local API: one HTML document for a site admin.

Rendered on the server from the same sources as ``/v1/*`` (``AgentView.devices()``,
``sinks()``, the store's stats, pending requests and windows), so what the page shows is what
the JSON says. Each room's bookings are shown in the room's own time zone. The page has no
external assets (inline CSS, one inline script): the local API is often reached through an SSH
tunnel from a machine without internet access. The script re-fetches the page every
:data:`REFRESH_S` and swaps its body, keeping the scroll position; without JavaScript a
``<noscript>`` meta refresh does the same.

Private bookings (``privacy`` ``Private`` or ``Confidential``, as devices, Graph and Google name
them) show neither title nor organizer unless ``[api] show_private = true``;
:func:`booking_view` applies the same rule to ``/v1/devices/{id}/bookings``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from html import escape
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent import __version__
from edge_agent.clock import parse_utc

if TYPE_CHECKING:
    from edge_agent.ops.api import AgentView

__all__ = ["MAX_BOOKINGS_SHOWN", "REFRESH_S", "booking_view", "is_private", "page", "render"]

REFRESH_S = 10
"""Seconds between refreshes of the page."""
MAX_BOOKINGS_SHOWN = 6
"""Bookings listed per room; the rest are counted ("+3 more"; all are in ``/v1``)."""
PRIVATE_VALUES = frozenset({"private", "confidential"})
HIDDEN = "(private)"


def is_private(booking: Mapping[str, Any]) -> bool:
    privacy = booking.get("privacy")
    return isinstance(privacy, str) and privacy.strip().lower() in PRIVATE_VALUES


def booking_view(booking: Mapping[str, Any], show_private: bool) -> dict[str, Any]:
    """``booking`` as the local API may show it: a private one loses its title, organizer and
    agenda (``hidden: true`` says so) unless ``show_private``."""
    out = dict(booking)
    if show_private or not is_private(booking):
        return out
    out["title"] = None
    out["agenda"] = None
    organizer = booking.get("organizer")
    out["organizer"] = {k: None for k in organizer} if isinstance(organizer, Mapping) else None
    out["hidden"] = True
    return out


# --- rendering -------------------------------------------------------------------------------


def _zone(name: Any) -> tzinfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "—"
    s = int((now - then).total_seconds())
    if s < 0:
        return "just now"
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s // 3600} h {s % 3600 // 60} min ago"
    return f"{s // 86400} d ago"


def _time_cell(value: Any, now: datetime) -> str:
    """A relative time with the UTC instant as its tooltip."""
    then = _when(value)
    if then is None:
        return '<span class="dim">—</span>'
    return f'<time datetime="{escape(str(value))}" title="{escape(str(value))}">{_ago(then, now)}</time>'


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _bookings_cell(bookings: Sequence[Mapping[str, Any]], zone: tzinfo, now: datetime) -> str:
    if not bookings:
        return '<span class="dim">no bookings</span>'
    lines = []
    for b in bookings[:MAX_BOOKINGS_SHOWN]:
        start, end = _when(b.get("start")), _when(b.get("end"))
        if start is None or end is None:
            continue
        ls, le = start.astimezone(zone), end.astimezone(zone)
        day = "" if ls.date() == now.astimezone(zone).date() else ls.strftime("%a %d %b ")
        span = f"{day}{ls:%H:%M}–{le:%H:%M}"
        current = start <= now < end
        if b.get("hidden"):
            what = f'<span class="dim">{HIDDEN}</span>'
        else:
            title = b.get("title") or "(no title)"
            organizer = b.get("organizer") or {}
            who = (
                organizer.get("name") or organizer.get("email")
                if isinstance(organizer, Mapping)
                else None
            )
            what = _e(title) + (f' <span class="dim">· {_e(who)}</span>' if who else "")
        cls = ' class="now"' if current else ""
        lines.append(f'<li{cls}><span class="span">{_e(span)}</span> {what}</li>')
    more = len(bookings) - MAX_BOOKINGS_SHOWN
    if more > 0:
        lines.append(f'<li class="dim">+{more} more</li>')
    return '<ul class="bk">' + "".join(lines) + "</ul>"


def _occupancy_cell(device: Mapping[str, Any]) -> str:
    """The ``occupancy`` of a ``/v1/devices`` entry (``edge_agent.session_occupancy``):
    people count and state, or why the device reports none."""
    occ = device.get("occupancy")
    if not isinstance(occ, Mapping):
        return '<span class="dim">—</span>'
    parts = []
    count = occ.get("people_count")
    if isinstance(count, int) and count >= 0:
        parts.append(f"{count} people")
    state = occ.get("state")
    if state is None and occ.get("presence") in ("Yes", "No"):
        state = "occupied" if occ["presence"] == "Yes" else "empty"
    if isinstance(state, str) and state != "unknown":
        parts.append(state)
    html = _e(", ".join(parts)) if parts else '<span class="dim">unknown</span>'
    hint = occ.get("hint")
    if hint:
        html += f'<br><span class="err">{_e(hint)}</span>'
    return html


def _room_row(
    device: Mapping[str, Any], bookings: Sequence[Mapping[str, Any]], now: datetime
) -> str:
    connected = bool(device.get("connected"))
    rid = str(device.get("id"))
    zone_name = device.get("time_zone")
    zone = _zone(zone_name)
    since = device.get("connected_since") if connected else device.get("down_since")
    state = (
        '<span class="badge ok">connected</span>'
        if connected
        else '<span class="badge bad">down</span>'
    )
    error = device.get("last_error")
    error_cell = '<span class="dim">—</span>'
    if error:
        error_cell = (
            f'<span class="err">{_e(error)}</span><br><span class="dim">'
            f"{_time_cell(device.get('last_error_at'), now)}</span>"
        )
    source = device.get("source") or device.get("calendar") or "device"
    local_now = now.astimezone(zone).strftime("%H:%M")
    return (
        f'<tr data-room="{_e(rid)}" data-connected="{str(connected).lower()}"'
        f' data-bookings="{len(bookings)}">'
        f'<td class="id">{_e(rid)}</td>'
        f"<td>{state}<br><span class='dim'>{_time_cell(since, now)}</span></td>"
        f"<td>{_time_cell(device.get('last_seen'), now)}</td>"
        f"<td>{_e(zone_name or 'UTC')}<br><span class='dim'>now {local_now}</span></td>"
        f"<td>{_e(source)}</td>"
        f"<td>{_occupancy_cell(device)}</td>"
        f'<td class="num">{len(bookings)}</td>'
        f"<td>{_bookings_cell(bookings, zone, now)}</td>"
        f"<td>{error_cell}</td>"
        "</tr>"
    )


def _sink_rows(sinks: Sequence[Mapping[str, Any]], stats: Mapping[str, Any]) -> str:
    per_sink = stats.get("sinks") if isinstance(stats.get("sinks"), Mapping) else {}
    rows = []
    for s in sinks:
        name = str(s.get("name"))
        st = per_sink.get(name) if isinstance(per_sink, Mapping) else None
        st = st if isinstance(st, Mapping) else {}
        gone = s.get("state") == "gone"
        ready = bool(s.get("ready"))
        badge = (
            '<span class="badge bad">gone</span>'
            if gone
            else '<span class="badge ok">ready</span>'
            if ready
            else '<span class="badge warn">not ready</span>'
        )
        oldest = st.get("oldest_age_s")
        rows.append(
            f'<tr data-sink="{_e(name)}"><td class="id">{_e(name)}</td><td>{badge}</td>'
            f'<td class="num">{_e(st.get("depth", s.get("outbox_depth", 0)))}</td>'
            f'<td class="num">{_e("—" if oldest is None else f"{float(oldest):.0f} s")}</td>'
            f'<td class="err">{_e(s.get("last_error") or "")}</td></tr>'
        )
    return "".join(rows) or '<tr><td colspan="5" class="dim">no sink configured</td></tr>'


def render(
    *,
    site: str | None,
    ready: bool,
    reasons: Sequence[str],
    devices: Sequence[Mapping[str, Any]],
    sinks: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any] | None,
    pending: int | None,
    bookings: Mapping[str, Sequence[Mapping[str, Any]]],
    now: datetime,
) -> str:
    """The whole page. ``bookings`` are by device id, already passed through
    :func:`booking_view` and sorted by start; ``stats`` is ``Store.stats()`` (``None``: the store
    is not open)."""
    stats = stats or {}
    # Problems first: a down room at the top of 300 is what the admin came for.
    ordered = sorted(devices, key=lambda d: (bool(d.get("connected")), str(d.get("id"))))
    connected = sum(1 for d in devices if d.get("connected"))
    per_sink = stats.get("sinks")
    values = per_sink.values() if isinstance(per_sink, Mapping) else ()
    depth = sum(int(v.get("depth") or 0) for v in values if isinstance(v, Mapping))
    state = (
        '<span class="badge ok big">READY</span>'
        if ready
        else '<span class="badge bad big">NOT READY</span> ' + _e("; ".join(reasons))
    )
    rooms = "".join(_room_row(d, bookings.get(str(d.get("id")), ()), now) for d in ordered)
    if not rooms:
        rooms = '<tr><td colspan="9" class="dim">no room configured</td></tr>'
    down_cls = "bad" if connected < len(devices) else "ok"
    oldest = [
        float(v["oldest_age_s"])
        for v in values
        if isinstance(v, Mapping) and isinstance(v.get("oldest_age_s"), int | float)
    ]
    dead = stats.get("dead_letters")
    cards = [
        ("rooms connected", f"{connected} / {len(devices)}", down_cls, "rooms"),
        ("outbox depth", str(depth) if stats else "store not open", "", "outbox"),
        ("oldest undelivered", f"{max(oldest):.0f} s" if oldest else "—", "", "oldest"),
        ("pending requests", "—" if pending is None else str(pending), "", "pending"),
        ("dead letters", _e("—" if dead is None else dead), "bad" if dead else "", "dead-letters"),
    ]
    card_html = "".join(
        f'<div class="card {cls}" data-card="{key}"><div class="v">{value}</div>'
        f'<div class="k">{label}</div></div>'
        for label, value, cls, key in cards
    )
    title = f"edge-agent · {site}" if site else "edge-agent"
    return _PAGE.format(
        title=_e(title),
        refresh=REFRESH_S,
        css=_CSS,
        script=_SCRIPT.replace("REFRESH_MS", str(REFRESH_S * 1000)),
        state=state,
        generated=_e(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        version=_e(__version__),
        cards=card_html,
        sinks=_sink_rows(sinks, stats),
        rooms=rooms,
    )


_CSS = """
:root{--bg:#f6f7f9;--fg:#1d2330;--dim:#6b7280;--line:#e3e6eb;--ok:#15803d;--bad:#b91c1c;
--warn:#b45309;--card:#fff}
*{box-sizing:border-box}[hidden]{display:none!important}time{white-space:nowrap}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--fg)}
header{display:flex;align-items:center;gap:16px;padding:14px 24px;background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0;font-weight:600}
header .meta{margin-left:auto;color:#cbd5e1;font-size:12px}
main{padding:16px 24px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;
min-width:160px}
.card .v{font-size:22px;font-weight:600}.card .k{color:var(--dim);font-size:12px}
.card.bad .v{color:var(--bad)}.card.ok .v{color:var(--ok)}
h2{font-size:15px;margin:18px 0 8px}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid var(--line)}
th{font-size:12px;color:var(--dim);font-weight:600;background:#fafbfc}
td.id{font-weight:600;white-space:nowrap}td.num{text-align:right}
.dim{color:var(--dim)}td .dim{white-space:nowrap}.err{color:var(--bad);font-size:12px;max-width:360px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.badge.ok{background:var(--ok)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}
.badge.big{font-size:13px;padding:2px 10px}
ul.bk{list-style:none;margin:0;padding:0}ul.bk li{white-space:nowrap}
ul.bk li.now{font-weight:600}ul.bk .span{font-variant-numeric:tabular-nums;color:#374151}
"""

_SCRIPT = """
(function(){
  // Re-fetch this page and swap its body; keeps the scroll position (a reload would not).
  function refresh(){
    fetch(location.href,{cache:"no-store"}).then(function(r){return r.text();}).then(function(t){
      var doc=new DOMParser().parseFromString(t,"text/html");
      var fresh=doc.getElementById("content");
      if(fresh){document.getElementById("content").replaceWith(fresh);}
      document.getElementById("stale").hidden=true;
    }).catch(function(){document.getElementById("stale").hidden=false;});
  }
  setInterval(refresh,REFRESH_MS);
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>
<style>{css}</style></head>
<body>
<header><h1>{title}</h1><span id="stale" class="badge bad" hidden>agent unreachable</span>
<span class="meta">refreshes every {refresh} s · JSON at /v1/devices, /v1/outbox, /readyz ·
v{version}</span></header>
<main id="content">
<p>{state} <span class="dim">as of {generated}</span></p>
<div class="cards">{cards}</div>
<h2>Sinks</h2>
<table id="sinks"><thead><tr><th>SINK</th><th>STATE</th><th>BACKLOG</th><th>OLDEST</th>
<th>LAST ERROR</th></tr></thead><tbody>{sinks}</tbody></table>
<h2>Rooms <span class="dim">(down first; bookings in the room's local time)</span></h2>
<table id="rooms"><thead><tr><th>ROOM</th><th>LINK · SINCE</th><th>LAST SEEN</th>
<th>TIME ZONE</th><th>SOURCE</th><th>OCCUPANCY</th><th>BOOKINGS</th><th>SCHEDULE</th>
<th>LAST ERROR</th></tr></thead><tbody>{rooms}</tbody></table>
</main>
<script>{script}</script>
</body></html>
"""


async def page(agent: AgentView, *, show_private: bool, now: datetime) -> str:
    """Read what the page shows from ``agent`` (the same calls as ``/v1/*``) and render it."""
    from edge_agent.ops.api import readiness

    ready, reasons = readiness(agent)
    devices = list(agent.devices())
    store = agent.store
    stats: Mapping[str, Any] | None = None
    pending: int | None = None
    bookings: dict[str, list[dict[str, Any]]] = {}
    if store is not None:
        stats = await store.stats()
        pending = len(await store.load_pending(None))
        for d in devices:
            window = await store.load_window(str(d.get("id")))
            rows = sorted(window.items(), key=lambda kv: (str(kv[1].get("start") or ""), kv[0]))
            bookings[str(d.get("id"))] = [booking_view(b, show_private) for _, b in rows]
    config = getattr(agent, "config", None)
    return render(
        site=getattr(config, "site", None),
        ready=ready,
        reasons=reasons,
        devices=devices,
        sinks=list(agent.sinks()),
        stats=stats,
        pending=pending,
        bookings=bookings,
        now=now,
    )
