"""Connector kinds: the built-in ones and third-party ones registered by entry point.

A package adds a kind by declaring, in its ``pyproject.toml``::

    [project.entry-points."idsync.connectors"]
    workday = "idsync_workday:KIND"        # a connectors.base.ConnectorKind

The entry point's name is the ``kind`` used in the configuration file. Built-in kinds are declared the
same way in idsync's own ``pyproject.toml``, so both paths are exercised by every run.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from connectors.base import Connector, ConnectorKind
from schemas.config import _kind_of, register_connector_config
from schemas.errors import ConfigError

log = logging.getLogger("idsync.connectors")

GROUP = "idsync.connectors"

_KINDS: dict[str, ConnectorKind] = {}
_LOADED = False


def register(kind: ConnectorKind, name: str | None = None) -> str:
    """Register a connector kind (its config model becomes valid in configuration files)."""
    declared = _kind_of(kind.config_model)
    if name is not None and name != declared:
        raise ConfigError(
            f"entry point {name!r} in {GROUP} has a config model of kind {declared!r}; the names must match"
        )
    known = _KINDS.get(declared)
    if known is not None and known is not kind:
        raise ConfigError(f"connector kind {declared!r} is registered twice")
    register_connector_config(kind.config_model)
    _KINDS[declared] = kind
    return declared


def load() -> dict[str, ConnectorKind]:
    """Load every kind declared under the entry point group (once per process)."""
    global _LOADED
    if not _LOADED:
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(f"connector kind {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            if not isinstance(obj, ConnectorKind):
                raise ConfigError(f"entry point {ep.name!r} ({ep.value}) is not a ConnectorKind")
            register(obj, ep.name)
        _LOADED = True
    return dict(_KINDS)


def build_connector(name: str, config: Any) -> Connector:
    """Build the connector named ``name`` from its validated config."""
    kinds = load()
    kind = kinds.get(config.kind)
    if kind is None:
        raise ConfigError(f"connectors.{name}.kind: no connector registered for kind {config.kind!r}")
    return kind.factory(name, config)
