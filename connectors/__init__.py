"""Connectors: each reads a connected system into change records and applies pending exports to it."""
