"""Site operations: the command line, the local HTTP API, logging, systemd notification, memory
trimming and the demo. Nothing in the pipeline (xapi -> bookings -> session -> store -> forward)
imports from here, except the agent wiring it all together."""
