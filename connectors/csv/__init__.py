"""CSV connector: full import of a delimited file (an HR feed)."""

from connectors.csv.connector import CsvConnector

__all__ = ["CsvConnector"]
