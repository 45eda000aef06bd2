"""Generic SQL connector (SQLAlchemy 2): PostgreSQL, MariaDB/MySQL, SQLite, like MIM's GSQL MA."""

from connectors.base import ConnectorKind
from connectors.sql.config import SqlConnectorConfig
from connectors.sql.connector import SqlConnector, SqlDeltaConnector, create
from connectors.sql.errors import map_sql_error

KIND = ConnectorKind(
    SqlConnectorConfig,
    create,
    "SQL database (SQLAlchemy): streamed import, delta by watermark column or change table, export",
)

__all__ = ["KIND", "SqlConnector", "SqlConnectorConfig", "SqlDeltaConnector", "create", "map_sql_error"]
