"""RoomOS edge agent: buffers Cisco device bookings locally and forwards them to the cloud."""

__version__ = "0.1.0"
