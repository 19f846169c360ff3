"""A simulator of the device side of Cisco's xAPI over WebSocket (Bookings, statuses, faults).

It is an independent implementation: nothing here imports ``edge_agent``.
"""

__version__ = "0.1.0"
