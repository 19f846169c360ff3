"""Software profiles: which xAPI objects a simulated device has, read from Cisco's own schema.

The schema files in ``device_sim/schema/`` are extracts of Cisco's machine-readable xAPI
reference. They are the single source of truth for event field sets, command parameters and
value spaces; the simulator filters every event it emits through its profile.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

ProfileName = Literal["current", "modern", "legacy"]
PROFILES: tuple[str, ...] = ("current", "modern", "legacy")

SCHEMA_FILES: dict[str, str] = {
    "current": "roomos-26.4.1-bookings.json",
    "modern": "roomos-26.4.1-bookings.json",
    "legacy": "roomos-11.19.1-bookings.json",
}

# RoomOS 26.8 added RoomAnalytics RoomInUse (status and Set command). No 26.8 extract of
# Cisco's reference is at hand: the "current" profile is 26.4.1 plus this overlay (its
# "source" says what it is written from).
OVERLAYS: dict[str, tuple[str, ...]] = {"current": ("roomos-26.8-roomanalytics-overlay.json",)}

SOFTWARE_VERSIONS: dict[str, str] = {
    "current": "ce26.8.0.12 8b1d4e07a2c 2026-09-03",
    "modern": "ce26.4.1.4 5f9a2c81b3e 2026-03-12",
    "legacy": "ce11.19.1.2 6d9a1b3f1e0 2024-08-14",
}

# RoomOS 11.x has more events in its schema than the ones a real 11.x device was seen sending
# with a hybrid calendar; the legacy profile sends only these (with the 11.19.1 field sets):
# the agent must learn everything else by re-listing.
LEGACY_EVENTS = frozenset({"BookingRequested", "Start", "End", "Updated"})


@dataclass(frozen=True, slots=True)
class Param:
    """One command parameter from the schema."""

    name: str
    required: bool
    kind: str  # "Integer", "String" or "Literal"
    minimum: int | None = None
    maximum: int | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    """What one software version offers: events with their fields, command parameters."""

    name: str
    software_version: str
    events: dict[str, dict[str, Any]]  # event name -> children (name -> {required, valuespace})
    commands: dict[str, tuple[Param, ...]]  # "Bookings List" -> params
    command_roles: dict[str, tuple[str, ...]]
    objects: tuple[dict[str, Any], ...]
    statuses: dict[str, dict[str, Any]]  # "RoomAnalytics PeoplePresence" -> attributes
    # "Time Zone" -> the roles the schema lets read that configuration (its ``read`` list)
    config_read_roles: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def has_status(self, path: str) -> bool:
        return path in self.statuses

    def has_event(self, name: str) -> bool:
        return name in self.events

    def event_fields(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Keep only the fields this software version sends for ``name``."""
        children = self.events[name]
        return {k: v for k, v in fields.items() if k in children}


def load_schema(profile: str) -> dict[str, Any]:
    """The raw schema document of a profile (as shipped in ``device_sim/schema``)."""
    folder = resources.files("device_sim").joinpath("schema")
    data: dict[str, Any] = json.loads(folder.joinpath(SCHEMA_FILES[profile]).read_text())
    for overlay in OVERLAYS.get(profile, ()):
        extra = json.loads(folder.joinpath(overlay).read_text())
        data = {**data, "objects": [*data["objects"], *extra["objects"]]}
    return data


def _param(raw: dict[str, Any]) -> Param:
    vs = raw.get("valuespace", {})
    kind = str(vs.get("type", "String"))
    if kind == "Integer":
        return Param(raw["name"], bool(raw.get("required")), kind, int(vs["Min"]), int(vs["Max"]))
    if kind == "Literal":
        return Param(raw["name"], bool(raw.get("required")), kind, values=tuple(vs["Values"]))
    return Param(
        raw["name"],
        bool(raw.get("required")),
        "String",
        int(vs.get("MinLength", 0)),
        int(vs.get("MaxLength", 255)),
    )


@functools.cache
def get_profile(name: str) -> Profile:
    """The profile called ``name`` ("current", "modern" or "legacy"), loaded once."""
    if name not in SCHEMA_FILES:
        raise ValueError(f"unknown software profile {name!r} (current, modern or legacy)")
    schema = load_schema(name)
    events: dict[str, dict[str, Any]] = {}
    commands: dict[str, tuple[Param, ...]] = {}
    roles: dict[str, tuple[str, ...]] = {}
    statuses: dict[str, dict[str, Any]] = {}
    config_read: dict[str, tuple[str, ...]] = {}
    for obj in schema["objects"]:
        attrs = obj["attributes"]
        if obj["type"] == "Status":
            statuses[obj["path"]] = attrs
        if obj["type"] == "Configuration":
            config_read[obj["path"]] = tuple(attrs.get("read") or attrs.get("role") or ())
        if obj["type"] == "Event" and obj["path"].startswith("Bookings "):
            event = obj["path"].split(" ", 1)[1]
            if name == "legacy" and event not in LEGACY_EVENTS:
                continue
            events[event] = attrs.get("children", {})
        elif obj["type"] == "Command":
            commands[obj["path"]] = tuple(_param(p) for p in attrs.get("params", []))
            roles[obj["path"]] = tuple(attrs.get("role", []))
    return Profile(
        name=name,
        software_version=SOFTWARE_VERSIONS[name],
        events=events,
        commands=commands,
        command_roles=roles,
        objects=tuple(schema["objects"]),
        statuses=statuses,
        config_read_roles=config_read,
    )
