"""A simulator of the device side of Cisco's xAPI over WebSocket (Bookings, statuses, faults).

It is an independent implementation: nothing here imports ``edge_agent``.

    from device_sim import SimConfig, DeviceFleet
    async with DeviceFleet(SimConfig(devices=2, mode="hybrid")) as fleet:
        dev = fleet.devices[0]          # dev.port, dev.url, dev.calendar, dev.faults
"""

from .calendar import Booking, Calendar, CalendarError, Organizer, parse_time, utc_iso
from .clock import SimClock
from .control import ControlServer, make_app
from .core import DeviceCore, DeviceSettings, Session
from .fleet import DeviceFleet, SimConfig
from .profiles import Profile, get_profile
from .server import Device, DeviceCalendar, Faults

__version__ = "0.1.0"

__all__ = [
    "Booking",
    "Calendar",
    "CalendarError",
    "ControlServer",
    "Device",
    "DeviceCalendar",
    "DeviceCore",
    "DeviceFleet",
    "DeviceSettings",
    "Faults",
    "Organizer",
    "Profile",
    "Session",
    "SimClock",
    "SimConfig",
    "get_profile",
    "make_app",
    "parse_time",
    "utc_iso",
]
