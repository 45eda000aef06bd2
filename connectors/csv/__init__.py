"""CSV connector: full import of a delimited file (an HR feed); export to a file holding the full image."""

from connectors.base import ConnectorKind
from connectors.csv.connector import CsvConnector
from connectors.csv.export import CsvExportConnector, open_csv
from schemas.config import CsvConnectorConfig

KIND = ConnectorKind(
    CsvConnectorConfig, open_csv, "delimited file (HR feed): full import; export with export_path"
)

__all__ = ["KIND", "CsvConnector", "CsvExportConnector", "open_csv"]
