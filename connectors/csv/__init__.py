"""CSV connector: full import of a delimited file (an HR feed)."""

from connectors.base import ConnectorKind
from connectors.csv.connector import CsvConnector
from schemas.config import CsvConnectorConfig

KIND = ConnectorKind(CsvConnectorConfig, CsvConnector, "delimited file (HR feed): full import")

__all__ = ["KIND", "CsvConnector"]
