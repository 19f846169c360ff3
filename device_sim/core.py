"""One simulated device without I/O: the status and configuration trees, the JSON-RPC methods,
subscriptions and the calendar.

The I/O shell (``device_sim.server``) hands frames to ``DeviceCore.receive`` and time to
``DeviceCore.tick``; everything the device sends goes to ``Session.send`` as ``Outgoing``
frames. Tests drive this class directly, without sockets.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from . import rpc, tree
from .calendar import Booking, Calendar, CalendarError, CalendarMode, Organizer, parse_time, utc_iso
from .occupancy import RoomSensing, SensingSettings
from .profiles import Param, Profile, get_profile
from .rpc import Outgoing, RpcError
from .tree import Path

log = logging.getLogger(__name__)

ADMIN = "Admin"
USER = "User"
ROOTS = ("Status", "Configuration", "Event")
# The status leaves whose changes subscribers hear about (Uptime and SystemTime change every
# second and are only ever read).
WATCHED_STATUS = ("Bookings", "RoomAnalytics")


@dataclass(slots=True)
class DeviceSettings:
    """What makes one simulated device (see ``SimConfig`` for the fleet-wide options)."""

    index: int = 0
    device_id: str = "sim-0000"
    product_id: str = "Cisco Room Kit Pro"
    profile: str = "modern"
    mode: CalendarMode = "local"
    time_zone: str = "Etc/UTC"
    booking_timeout_s: int = 60
    confirm_delay_s: float = 5.0
    http_mode: str = "HTTPS"
    seed: int = 0
    max_subscriptions: int = 50
    sensing: SensingSettings = field(default_factory=SensingSettings)
    counting: bool = True  # Configuration RoomAnalytics PeopleCountOutOfCall On
    presence_detector: bool = True  # Configuration RoomAnalytics PeoplePresenceDetector On


@dataclass(eq=False, slots=True)
class Session:
    """One WebSocket connection's view of the device: its role and subscriptions."""

    role: str = ADMIN
    send: Callable[[Outgoing], None] | None = None
    subscriptions: dict[int, Path] = field(default_factory=dict)
    next_subscription_id: int = 0
    sent: list[Outgoing] = field(default_factory=list)  # when ``send`` is None (tests)

    def deliver(self, frame: Outgoing) -> None:
        if self.send is None:
            self.sent.append(frame)
        else:
            self.send(frame)

    def take(self) -> list[Outgoing]:
        """The frames delivered so far (without ``send``), emptying the list."""
        frames, self.sent = self.sent, []
        return frames


def _validate_param(param: Param, value: Any) -> Any:
    if param.kind == "Integer":
        if isinstance(value, bool):
            raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: not an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: not an integer") from None
        if param.minimum is not None and number < param.minimum:
            raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: below {param.minimum}")
        if param.maximum is not None and number > param.maximum:
            raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: above {param.maximum}")
        return number
    if param.kind == "Literal":
        if str(value) not in param.values:
            raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: not one of {list(param.values)}")
        return str(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: not a string")
    text = str(value)
    if param.maximum is not None and len(text) > param.maximum:
        raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: longer than {param.maximum}")
    if param.minimum is not None and len(text) < param.minimum:
        raise RpcError(rpc.INVALID_PARAMS, f"{param.name}: shorter than {param.minimum}")
    return text


class DeviceCore:
    """The protocol and domain state of one device (sans-I/O)."""

    def __init__(self, settings: DeviceSettings, now: datetime) -> None:
        self.settings = settings
        self.profile: Profile = get_profile(settings.profile)
        self.zone = ZoneInfo(settings.time_zone)
        self.calendar = Calendar(
            mode=settings.mode,
            confirm_delay_s=settings.confirm_delay_s,
            booking_timeout_s=settings.booking_timeout_s,
            seed=settings.seed,
            now=now,
        )
        self.config: dict[str, Any] = {
            "Bookings": {"AdhocBooking": {"BookingTimeout": settings.booking_timeout_s}},
            "NetworkServices": {
                "HTTP": {"Mode": settings.http_mode},
                "Websocket": "FollowHTTPService",
            },
            "Time": {"Zone": settings.time_zone},
            "RoomAnalytics": {
                "PeopleCountOutOfCall": "On" if settings.counting else "Off",
                "PeoplePresenceDetector": "On" if settings.presence_detector else "Off",
            },
        }
        self.sensing = RoomSensing(settings.seed, settings.sensing)
        self._sensing_due: datetime | None = None
        self.booted_at = now
        self.ready = True
        self.sync_required = False
        self.sessions: set[Session] = set()
        self.produced: Counter[str] = Counter()
        # faults hook: how many times to send each event notification (2 while duplicating)
        self.event_copies: Callable[[], int] = lambda: 1
        # scheduler hook: called with the calendar's next due time after every change
        self.on_due: Callable[[datetime | None], None] = lambda due: None
        self._watched = self._watched_status(now)

    # ---- trees --------------------------------------------------------------------------------

    def _watched_status(self, now: datetime) -> dict[Path, Any]:
        status, stamp, current = self.calendar.availability(now)
        return {
            ("Status", "Bookings", "Availability", "Status"): status,
            ("Status", "Bookings", "Availability", "TimeStamp"): stamp,
            ("Status", "Bookings", "Current", "Id"): current,
            **self._room_analytics(now),
        }

    def _room_analytics(self, now: datetime) -> dict[Path, Any]:
        """``Status RoomAnalytics`` as the configuration lets the device report it (see
        ``device_sim.occupancy``); remembers when it may change next for the scheduler."""
        visits = self.sensing.visits(self.calendar.bookings.values(), now)
        self._sensing_due = self.sensing.next_change(visits, now)
        ra = self.config["RoomAnalytics"]
        people = self.sensing.people(visits, now)
        present = self.sensing.present(visits, now)
        out: dict[Path, Any] = {
            ("Status", "RoomAnalytics", "PeopleCount", "Current"): (
                people if ra["PeopleCountOutOfCall"] == "On" else -1
            ),
            ("Status", "RoomAnalytics", "PeoplePresence"): (
                ("Yes" if present else "No") if ra["PeoplePresenceDetector"] == "On" else "Unknown"
            ),
        }
        if self.profile.has_status("RoomAnalytics RoomInUse"):
            in_use = self.sensing.in_use(present and ra["PeoplePresenceDetector"] == "On", now)
            out[("Status", "RoomAnalytics", "RoomInUse")] = "True" if in_use else "False"
        return out

    def next_due(self) -> datetime | None:
        """When ``tick`` has something to do: the calendar's next event or a change of people."""
        due = [d for d in (self.calendar.next_due(), self._sensing_due) if d is not None]
        return min(due) if due else None

    def status_tree(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "SystemUnit": {
                "ProductId": self.settings.product_id,
                "Software": {"Version": self.profile.software_version},
                "Uptime": max(0, int((now - self.booted_at).total_seconds())),
            },
            "Time": {"SystemTime": utc_iso(now)},
        }
        wrapped: dict[str, Any] = {"Status": out}
        for path, value in self._watched_status(now).items():
            tree.merge_into(wrapped, path, value)
        wrapped["Status"]["RoomAnalytics"]["PeopleCount"]["Capacity"] = (
            self.settings.sensing.capacity
        )
        return out

    def root(self, now: datetime) -> dict[str, Any]:
        return {"Status": self.status_tree(now), "Configuration": self.config}

    # ---- sessions ----------------------------------------------------------------------------

    def open_session(self, role: str = ADMIN) -> Session:
        session = Session(role=role)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.discard(session)

    # ---- frames in ---------------------------------------------------------------------------

    def receive(self, session: Session, data: str | bytes, now: datetime) -> None:
        """Handle one frame from ``session``: replies, then any events it caused."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            session.deliver(rpc.error_reply(None, RpcError(rpc.PARSE_ERROR)))
            return
        if not isinstance(doc, dict):
            session.deliver(rpc.error_reply(None, RpcError(rpc.INVALID_REQUEST)))
            return
        has_id = "id" in doc
        request_id = doc.get("id")
        after: list[Outgoing] = []
        try:
            method = doc.get("method")
            if doc.get("jsonrpc") != "2.0" or not isinstance(method, str):
                raise RpcError(rpc.INVALID_REQUEST)
            params = doc.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise RpcError(rpc.INVALID_PARAMS, "params must be an object")
            if not self.ready:
                raise RpcError(rpc.NOT_READY)
            result = self._call(session, method, params, now, after)
            reply = rpc.result_reply(request_id, result)
        except RpcError as exc:
            reply = rpc.error_reply(request_id, exc)
        except Exception:
            log.exception("device %s: internal error handling a request", self.settings.device_id)
            reply = rpc.error_reply(request_id, RpcError(rpc.INTERNAL_ERROR))
        if has_id:
            session.deliver(reply)
        for frame in after:
            session.deliver(frame)
        self.flush(now)

    def _call(
        self,
        session: Session,
        method: str,
        params: dict[str, Any],
        now: datetime,
        after: list[Outgoing],
    ) -> Any:
        if method == "xGet":
            return self._get(session, params, now)
        if method == "xQuery":
            return self._query(session, params, now)
        if method == "xSet":
            return self._set(session, params, now)
        if method == "xFeedback/Subscribe":
            return self._subscribe(session, params, now, after)
        if method == "xFeedback/Unsubscribe":
            return self._unsubscribe(session, params)
        if method.startswith("xCommand/"):
            return self._command(session, method.split("/")[1:], params, now)
        raise RpcError(rpc.METHOD_NOT_FOUND, f"no method {method}")

    def _path_param(self, params: dict[str, Any], name: str) -> Path:
        if name not in params:
            raise RpcError(rpc.INVALID_PARAMS, f"missing {name}")
        try:
            return tree.parse_path(params[name])
        except ValueError as exc:
            raise RpcError(rpc.INVALID_PARAMS, f"{name}: {exc}") from None

    def _check_read(self, session: Session, path: Path) -> None:
        if path[0].lower() == "configuration":
            self._check_config_read(session, path)
        if path[0].lower() == "status":
            self._check_status_roles(session, path)

    def _check_config_read(self, session: Session, path: Path) -> None:
        """The schema's ``read`` roles of one configuration (``Time Zone``: Admin, Integrator and
        User; ``Bookings AdhocBooking BookingTimeout``: Admin and User). A wildcard, a branch or
        a path the schema does not list needs Admin."""
        if session.role == ADMIN:
            return
        name = " ".join(path[1:])
        by_name = {known.lower(): roles for known, roles in self.profile.config_read_roles.items()}
        allowed = by_name.get(name.lower(), (ADMIN,))
        if session.role not in allowed:
            raise RpcError(
                rpc.PERMISSION_DENIED, f"the {session.role} role may not read Configuration {name}"
            )

    def _may_read_room_analytics(self, session: Session) -> bool:
        try:
            self._check_status_roles(session, ("Status", "RoomAnalytics"))
        except RpcError:
            return False
        return True

    def _check_status_roles(self, session: Session, pattern: Path) -> None:
        """The schema's roles of the RoomAnalytics statuses (people count and presence, marked
        ``privacyimpact``): a user whose role is not listed is refused (-31999). Other statuses
        stay readable by every user, as this simulator has always had them."""
        if session.role == ADMIN:
            return
        for name, attrs in self.profile.statuses.items():
            if not name.startswith("RoomAnalytics ") or session.role in attrs.get("role", ()):
                continue
            leaf = ("Status", *name.split())
            if tree.covers(pattern, leaf) or tree.glob_match(pattern, leaf[: len(pattern)]):
                raise RpcError(
                    rpc.PERMISSION_DENIED, f"the {session.role} role may not read Status {name}"
                )

    def _get(self, session: Session, params: dict[str, Any], now: datetime) -> Any:
        path = self._path_param(params, "Path")
        if tree.has_wildcard(path):
            raise RpcError(rpc.INVALID_PARAMS, "xGet takes no wildcards; use xQuery")
        self._check_read(session, path)
        try:
            return tree.lookup(self.root(now), path)
        except KeyError:
            raise RpcError(rpc.INVALID_PARAMS, "No match on Path argument") from None

    def _query(self, session: Session, params: dict[str, Any], now: datetime) -> Any:
        pattern = self._path_param(params, "Query")
        root = self.root(now)
        if session.role != ADMIN:
            if pattern[0].lower() == "configuration":
                raise RpcError(rpc.PERMISSION_DENIED, "the Admin role is needed for configuration")
            root = {"Status": root["Status"]}
            if not self._may_read_room_analytics(session):
                root["Status"] = {k: v for k, v in root["Status"].items() if k != "RoomAnalytics"}
        found = tree.query(root, pattern)
        if found is None:
            raise RpcError(rpc.INVALID_PARAMS, "No match on Query argument")
        return found

    def _set(self, session: Session, params: dict[str, Any], now: datetime) -> Any:
        path = self._path_param(params, "Path")
        if "Value" not in params:
            raise RpcError(rpc.INVALID_PARAMS, "missing Value")
        if path[0].lower() != "configuration":
            raise RpcError(rpc.INVALID_PARAMS, "only Configuration can be set")
        if session.role != ADMIN:
            raise RpcError(rpc.PERMISSION_DENIED, "the Admin role is needed to configure")
        try:
            full = ("Configuration", *tree.canonical(self.config, path[1:]))
            old = tree.lookup(self.config, full[1:])
        except KeyError:
            raise RpcError(rpc.INVALID_PARAMS, "No match on Path argument") from None
        if isinstance(old, dict):
            raise RpcError(rpc.INVALID_PARAMS, "Path names a subtree, not a value")
        value = self._config_value(" ".join(full[1:]), params["Value"])
        tree.merge_into(self.config, full[1:], value)
        if full[1:] == ("Time", "Zone"):
            self.zone = ZoneInfo(str(value))
        elif full[1:] == ("Bookings", "AdhocBooking", "BookingTimeout"):
            self.calendar.backend.booking_timeout_s = int(value)
        if value != old:
            self._notify_changes({full: value})
        return True

    def _config_value(self, name: str, value: Any) -> Any:
        for obj in self.profile.objects:
            if obj["type"] == "Configuration" and obj["path"] == name:
                space = obj["attributes"]["valuespace"]
                if space.get("type") == "Integer":
                    param = Param(name, True, "Integer", int(space["Min"]), int(space["Max"]))
                elif space.get("type") == "Literal":
                    param = Param(name, True, "Literal", values=tuple(space["Values"]))
                else:
                    param = Param(name, True, "String", 0, 255)
                checked = _validate_param(param, value)
                if name == "Time Zone":
                    try:
                        ZoneInfo(str(checked))
                    except (ZoneInfoNotFoundError, ValueError):
                        raise RpcError(rpc.INVALID_PARAMS, f"unknown zone {checked}") from None
                return checked
        raise RpcError(rpc.INVALID_PARAMS, f"{name} cannot be set")

    def _subscribe(
        self, session: Session, params: dict[str, Any], now: datetime, after: list[Outgoing]
    ) -> Any:
        pattern = self._path_param(params, "Query")
        roots = {r.lower(): r for r in ROOTS}
        if pattern[0].lower() not in roots:
            raise RpcError(
                rpc.INVALID_PARAMS, "Query must start with Status, Configuration or Event"
            )
        pattern = (roots[pattern[0].lower()], *pattern[1:])
        if pattern[0] == "Configuration":
            self._check_config_read(session, pattern)
        if pattern[0] == "Status":
            self._check_status_roles(session, pattern)
        if len(session.subscriptions) >= self.settings.max_subscriptions:
            raise RpcError(rpc.TOO_MANY_SUBSCRIPTIONS)
        sub_id = session.next_subscription_id
        session.next_subscription_id += 1
        session.subscriptions[sub_id] = pattern
        notify = params.get("NotifyCurrentValue", False)
        if notify in (True, "True", "true") and pattern[0] != "Event":
            current = tree.query({pattern[0]: self.root(now)[pattern[0]]}, pattern)
            if current is not None:
                after.append(rpc.notification(sub_id, current))
        sync_path = ("Event", "Bookings", "SyncRequired")
        if self.sync_required and self.profile.has_event("SyncRequired"):
            if tree.covers(pattern, sync_path):
                # a rebooted device tells its first Bookings subscriber to re-list
                self.sync_required = False
                self.produced["Bookings.SyncRequired"] += 1
                after.append(rpc.notification(sub_id, tree.nest(sync_path, {})))
        return {"Id": sub_id}

    def _unsubscribe(self, session: Session, params: dict[str, Any]) -> Any:
        sub_id = params.get("Id")
        if isinstance(sub_id, str) and sub_id.isdigit():
            sub_id = int(sub_id)
        if not isinstance(sub_id, int) or sub_id not in session.subscriptions:
            raise RpcError(rpc.INVALID_PARAMS, f"no subscription {sub_id!r}")
        del session.subscriptions[sub_id]
        return True

    # ---- commands ----------------------------------------------------------------------------

    def _command(
        self, session: Session, parts: list[str], params: dict[str, Any], now: datetime
    ) -> Any:
        name = " ".join(parts)
        spec = None
        for known in self.profile.commands:
            if known.lower() == name.lower():
                name, spec = known, self.profile.commands[known]
        if spec is None:
            raise RpcError(rpc.METHOD_NOT_FOUND, f"unknown command {name}")
        if session.role not in self.profile.command_roles.get(name, (ADMIN, USER)):
            raise RpcError(rpc.PERMISSION_DENIED, f"{name} needs the Admin role")
        args: dict[str, Any] = {}
        by_name = {p.name.lower(): p for p in spec}
        for key, value in params.items():
            param = by_name.get(key.lower())
            if param is None:
                if name == "Bookings Put" and key.lower() == "body":
                    args["body"] = value
                    continue
                raise RpcError(rpc.INVALID_PARAMS, f"unknown parameter {key}")
            args[param.name] = _validate_param(param, value)
        for param in spec:
            if param.required and param.name not in args:
                raise RpcError(rpc.INVALID_PARAMS, f"missing parameter {param.name}")
        try:
            return self._run_command(name, args, now)
        except CalendarError as exc:
            raise RpcError(
                rpc.COMMAND_ERROR, exc.reason, {"Cause": exc.cause, "Reason": exc.reason}
            ) from None

    def _run_command(self, name: str, args: dict[str, Any], now: datetime) -> Any:
        cal = self.calendar
        ok = {"status": "OK"}
        if name == "RoomAnalytics RoomInUse Set":
            # Only profiles with the command get here (26.8+); older software answers
            # "unknown command" above, as a device without the command does.
            self.sensing.set_in_use(
                args["State"] == "True", args.get("Duration"), str(args.get("ID", "")), now
            )
            return ok
        ids: dict[str, Any] = {"booking_id": args.get("Id"), "meeting_id": args.get("MeetingId")}
        if name == "Bookings List":
            return cal.list_bookings(
                now,
                self.zone,
                day_offset=args.get("DayOffset"),
                days=args.get("Days"),
                limit=args.get("Limit"),
                offset=args.get("Offset", 0),
                schedule_type=args.get("ScheduleType"),
            )
        if name == "Bookings Get":
            return cal.get(**ids)
        if name == "Bookings Book":
            cal.book(
                now,
                request_uuid=args.get("BookingRequestUUID"),
                duration_min=args.get("Duration", 30),
                start=self._time_arg(args),
                title=args.get("Title", ""),
                organizer=self._organizer_arg(args),
            )
            return ok
        if name == "Bookings Edit":
            cal.edit(
                now,
                **ids,
                start=self._time_arg(args),
                duration_min=args.get("Duration"),
                title=args.get("Title"),
                organizer=self._organizer_arg(args),
            )
            return ok
        if name == "Bookings Extend":
            cal.extend(now, duration_min=args["Duration"], **ids)
            return ok
        if name == "Bookings Delete":
            cal.delete(now, **ids)
            return ok
        if name == "Bookings CheckIn":
            cal.check_in(now, **ids)
            return ok
        if name == "Bookings CheckOut":
            cal.delete(now, **ids, cause="ManualCheckOut")
            return ok
        if name == "Bookings NotificationSnooze":
            cal.snooze(now, **ids)
            return ok
        if name == "Bookings Clear":
            cal.clear(now)
            return ok
        if name == "Bookings Put":
            cal.put(now, self._put_documents(args.get("body")))
            return ok
        return ok

    @staticmethod
    def _time_arg(args: dict[str, Any]) -> datetime | None:
        text = args.get("StartTime")
        if not text:
            return None
        try:
            return parse_time(str(text))
        except ValueError:
            raise RpcError(rpc.INVALID_PARAMS, "StartTime: not a UTC time") from None

    @staticmethod
    def _organizer_arg(args: dict[str, Any]) -> Organizer | None:
        if not any(k in args for k in ("OrganizerName", "OrganizerEmail", "OrganizerId")):
            return None
        return Organizer.from_name(
            args.get("OrganizerName", ""),
            args.get("OrganizerEmail", ""),
            args.get("OrganizerId", ""),
        )

    @staticmethod
    def _put_documents(body: Any) -> list[dict[str, Any]]:
        try:
            doc = orjson.loads(body) if isinstance(body, str | bytes) else body
            bookings = doc["Bookings"] if isinstance(doc, dict) else doc
            if not isinstance(bookings, list) or not all(isinstance(b, dict) for b in bookings):
                raise TypeError("Bookings must be a list of objects")
            for entry in bookings:
                parse_time(str(entry["Time"]["StartTime"]))
            return bookings
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RpcError(rpc.INVALID_PARAMS, f"body: not a bookings document ({exc})") from None

    # ---- events out ----------------------------------------------------------------------------

    def flush(self, now: datetime) -> None:
        """Send the events the calendar produced and the status changes that followed."""
        events, self.calendar.out = self.calendar.out, []
        for name, fields in events:
            self.emit_event(name, fields)
        watched = self._watched_status(now)
        changed = {p: v for p, v in watched.items() if self._watched.get(p) != v}
        self._watched = watched
        if changed:
            for group in ("Availability", "Current"):
                if any(p[2] == group for p in changed if p[1] == "Bookings"):
                    self.produced[f"Status.Bookings.{group}"] += 1
            self._notify_changes(changed)
        self.on_due(self.next_due())

    def emit_event(self, name: str, fields: dict[str, Any]) -> None:
        """Send ``Event Bookings <name>`` to every matching subscription (if the profile has it)."""
        if not self.profile.has_event(name):
            return
        self.produced[f"Bookings.{name}"] += 1
        path = ("Event", "Bookings", name)
        payload = tree.nest(path, self.profile.event_fields(name, fields))
        copies = self.event_copies()
        for session in list(self.sessions):
            for sub_id, pattern in list(session.subscriptions.items()):
                if tree.covers(pattern, path):
                    frame = rpc.notification(sub_id, payload)
                    for _ in range(copies):
                        session.deliver(frame)

    def _notify_changes(self, changed: dict[Path, Any]) -> None:
        for session in list(self.sessions):
            for sub_id, pattern in list(session.subscriptions.items()):
                payload: dict[str, Any] = {}
                for path, value in changed.items():
                    if tree.covers(pattern, path):
                        tree.merge_into(payload, path, value)
                if payload:
                    session.deliver(rpc.notification(sub_id, payload))

    # ---- time and lifecycle ------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        """Fire what the clock has reached."""
        self.calendar.tick(now)
        self.flush(now)

    def rebooted(self, now: datetime) -> None:
        """The device came back from a reboot: uptime restarts, subscribers must re-list."""
        self.booted_at = now
        self.ready = True
        self.sync_required = True
        if self.settings.mode == "hybrid":
            # hybrid-calendar Ids are not persistent across reboots (Cisco's Delete docs)
            self.calendar.renumber()
        self._watched = self._watched_status(now)
        self.on_due(self.next_due())

    # ---- people in the room, for the Python and control APIs ---------------------------------

    def set_people(
        self,
        now: datetime,
        *,
        people_count: int | None = None,
        clear: bool = False,
        counting: bool | None = None,
        presence_detector: bool | None = None,
    ) -> None:
        """Force the head count (``clear``: back to the model), or switch counting or presence
        detection (the Configuration a site admin sets). Subscribers hear the changes."""
        if clear or people_count is not None:
            self.sensing.force(None if clear else people_count)
        ra = self.config["RoomAnalytics"]
        changed: dict[Path, Any] = {}
        for key, value in (
            ("PeopleCountOutOfCall", counting),
            ("PeoplePresenceDetector", presence_detector),
        ):
            if value is not None and ra[key] != ("On" if value else "Off"):
                ra[key] = "On" if value else "Off"
                changed[("Configuration", "RoomAnalytics", key)] = ra[key]
        if changed:
            self._notify_changes(changed)
        self.flush(now)

    # ---- calendar actions for the Python and control APIs ------------------------------------

    def add_bookings(self, now: datetime, bookings: list[Booking], *, announce: bool) -> None:
        for booking in bookings:
            self.calendar.add(now, booking, announce=announce)
        if not announce:
            self.calendar.last_updated = now
            self._watched = self._watched_status(now)
        self.flush(now)
