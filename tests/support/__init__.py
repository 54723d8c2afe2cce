"""Helpers shared by the test tiers: service discovery, isolated names, a relay in a thread."""
