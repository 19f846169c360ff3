"""Calendar sources: rooms whose bookings come from a calendar service, not from a device.

``model`` (source-neutral bookings, room ids) and ``sync`` (the pure window logic) are shared by
every source; ``graph/`` is Microsoft 365 (Google will sit beside it). See docs/internals.md
"edge_agent.calendars" for the seam and the storage Protocol the agent implements.
"""
