"""Fakes of the calendar services the agent reads (Microsoft Graph; Google to come), over HTTPS.

Independent of ``edge_agent`` (nothing here imports it). ``common`` holds what every fake
needs (an HTTPS site with a certificate made at start, the simulated clock, the fault table,
the control API's base); each service lives in its own package, written from its vendor's docs:

    from calendar_sim.graph import GraphSim, GraphSimConfig
"""
