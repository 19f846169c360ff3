"""A Google Workspace fake (service-account tokens, Directory calendar resources, Calendar
events with page and sync tokens, watch channels), written from Google's documentation."""

from .model import GEvent, GoogleError, ResourceCalendar
from .sim import GoogleSim, GoogleSimConfig, fault_from_json

__all__ = [
    "GEvent",
    "GoogleError",
    "GoogleSim",
    "GoogleSimConfig",
    "ResourceCalendar",
    "fault_from_json",
]
