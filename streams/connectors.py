"""Builds connector instances from their config (built-in kinds and entry points alike)."""

from __future__ import annotations

from connectors.registry import build_connector

__all__ = ["build_connector"]
