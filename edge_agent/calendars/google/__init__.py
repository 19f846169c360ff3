"""Google Workspace as a calendar source: service-account auth, Directory and Calendar API
calls, event mapping, and the source adapter for the shared room poller."""
