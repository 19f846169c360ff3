"""Microsoft 365 as a calendar source: Graph auth, HTTP calls, event mapping, the room poller."""
