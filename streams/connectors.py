"""Builds connector instances from their config (built-in kinds; entry points come with the SDK)."""

from __future__ import annotations

from connectors.base import Connector
from connectors.csv import CsvConnector
from connectors.ldap import LdapConnector
from schemas.config import ConnectorConfig, CsvConnectorConfig, LdapConnectorConfig


def build_connector(name: str, config: ConnectorConfig) -> Connector:
    if isinstance(config, CsvConnectorConfig):
        return CsvConnector(name, config)
    if isinstance(config, LdapConnectorConfig):
        return LdapConnector(name, config)
    raise TypeError(f"no connector for kind {config.kind!r}")
