"""Metrics and health endpoints for the relay and the consumer."""
