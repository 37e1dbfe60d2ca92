"""Metrics, logs, traces: what an operator sees of the server from the outside."""
