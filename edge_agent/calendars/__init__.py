"""Calendar sources: rooms whose bookings come from a calendar service, not from a device.

``model`` (source-neutral bookings, room ids), ``sync`` (the pure window logic) and ``poller``
(the one I/O shell: discovery, rounds, pacing, the store) are shared by every source; a source
is an adapter behind ``poller.CalendarSource``: ``graph/`` is Microsoft 365, ``google/`` is
Google Workspace. See docs/internals.md "edge_agent.calendars" for the seam and the storage
Protocol the agent implements.
"""
