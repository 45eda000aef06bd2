"""One SQLAlchemy engine per connector: a small pool, connect timeouts, and the mapped object types."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Executable, Row, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from connectors.sql.config import SqlConnectorConfig
from connectors.sql.errors import map_sql_error
from connectors.sql.mapping import MappedType, map_object_type
from schemas.errors import FatalError, IdsyncError

#: Seconds MySQL/MariaDB wait to push rows to a slow reader of a streamed result (default 60 s): the
#: consumer of an import may pause longer than that between two batches.
MYSQL_STREAM_WRITE_TIMEOUT_S = 3600


def _connect_args(backend: str, driver: str, config: SqlConnectorConfig, name: str) -> dict[str, Any]:
    """Connect and lock timeouts in each driver's own terms."""
    connect_s = max(1, math.ceil(config.connect_timeout_s))
    lock_ms = max(1, round(config.lock_timeout_s * 1000))
    if backend == "postgresql" and driver in ("psycopg", "psycopg2", "psycopg2cffi"):
        return {
            "connect_timeout": max(2, connect_s),  # libpq rounds anything below 2 s up to 2 s
            "application_name": f"idsync-{name}"[:63],
            "options": f"-c lock_timeout={lock_ms}",
        }
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        wait = max(1, math.ceil(config.lock_timeout_s))
        return {
            "connect_timeout": connect_s,
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {wait}",
        }
    if backend == "sqlite":
        return {"timeout": config.lock_timeout_s}  # how long to wait for another writer's lock
    return {}


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, emit BEGIN: pysqlite's own handling breaks SAVEPOINTs."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")  # enforce the foreign keys the schema declares
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


class Database:
    """The connector's engine (created on first use) and its object types (reflected on first use)."""

    def __init__(self, name: str, config: SqlConnectorConfig) -> None:
        self.name = name
        self.config = config
        self.url = config.display_url()
        self.secret = config.password.get_secret_value() if config.password is not None else None
        self._engine: Engine | None = None
        self._types: dict[str, MappedType] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._create()
            return self._engine

    def _create(self) -> Engine:
        cfg = self.config
        url = cfg.sqlalchemy_url()
        backend, driver = url.get_backend_name(), url.get_driver_name()
        options: dict[str, Any] = {
            "pool_pre_ping": True,
            "connect_args": _connect_args(backend, driver, cfg, self.name),
        }
        if not (backend == "sqlite" and url.database in (None, "", ":memory:")):
            options.update(
                pool_size=cfg.pool_size, max_overflow=cfg.max_overflow, pool_timeout=cfg.pool_timeout_s
            )
        try:
            engine = create_engine(url, **options)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            # The message names the dialect or driver, never the URL with its password.
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FatalError(
                f"Cannot use the database URL {self.url}: {text}", error_type="no-start-bad-url"
            ) from None
        if backend == "sqlite":
            _sqlite_transactions(engine)
        return engine

    @property
    def is_mysql(self) -> bool:
        return self.engine.dialect.name in ("mysql", "mariadb")

    def connect(self) -> Connection:
        return self.engine.connect()

    def dispose(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
            self._types = None
        if engine is not None:
            engine.dispose()

    def error(
        self, exc: BaseException, operation: str, subject: str, *, starting: bool = False
    ) -> IdsyncError:
        return map_sql_error(
            exc, operation=operation, subject=subject, url=self.url, starting=starting, secret=self.secret
        )

    # ------------------------------------------------------------------ object types
    def types(self, *, fresh: bool = False) -> dict[str, MappedType]:
        """Every configured object type, reflected (once, unless ``fresh``)."""
        if self._types is not None and not fresh:
            return self._types
        types: dict[str, MappedType] = {}
        subject = "the database"
        try:
            with self.connect() as conn:
                for name, cfg in self.config.object_types.items():
                    subject = f"object type {name!r}"
                    types[name] = map_object_type(conn, name, cfg)
        except SQLAlchemyError as exc:
            raise self.error(exc, "reflection", subject, starting=True) from None
        self._types = types
        return types

    def object_type(self, name: str) -> MappedType | None:
        return self.types().get(name)

    # ------------------------------------------------------------------ streaming
    def stream(self, stmt: Executable) -> Iterator[Sequence[Row[Any]]]:
        """The statement's rows, ``batch_size`` at a time, through a server-side cursor (own connection)."""
        with self.connect() as conn:
            if self.is_mysql:
                conn.exec_driver_sql(f"SET SESSION net_write_timeout = {MYSQL_STREAM_WRITE_TIMEOUT_S}")
            result = conn.execution_options(stream_results=True, yield_per=self.config.batch_size).execute(
                stmt
            )
            yield from result.partitions()
