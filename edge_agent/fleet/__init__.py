"""Fleet mode: several agents on one PostgreSQL, each device owned by one live member.

- :mod:`~edge_agent.fleet.assign`: pure rendezvous (HRW) hashing, device -> member;
- :mod:`~edge_agent.fleet.leases`: the membership and lease statements (heartbeat, acquire
  with a new fencing token, renew, release, the listing for ``/v1/fleet``);
- :mod:`~edge_agent.fleet.member`: :class:`FleetMember`, the loop that heartbeats, decides
  which devices this member should hold, takes and gives up leases, and tells the agent to
  start or stop each device's session.
"""

from __future__ import annotations

from edge_agent.fleet.assign import assign, owner
from edge_agent.fleet.member import FleetMember

__all__ = ["FleetMember", "assign", "owner"]
