"""Forwarding the outbox to the cloud: a drainer per sink, webhook and MQTT sinks."""
