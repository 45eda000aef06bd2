"""The Generic SQL connector: full and delta import, idempotent (batch) export, schema, connection check."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import literal, select
from sqlalchemy.exc import SQLAlchemyError

from connectors.base import (
    Checkpoint,
    ConnectorSchema,
    DeltaItem,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
)
from connectors.sql import reading, watermark
from connectors.sql.config import SqlConnectorConfig
from connectors.sql.database import Database
from connectors.sql.mapping import MappedType, object_type_schema, raw
from connectors.sql.writing import Writer
from schemas.errors import DataError, FatalError, IdsyncError
from schemas.records import PendingExport


class _Abort(Exception):
    """A batch export hit an error that is not about one object: its transaction is rolled back."""

    def __init__(self, index: int, error: IdsyncError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


class SqlConnector:
    """Connector, FullImport, Export, BatchExport, SchemaDiscovery and ConnectionCheck on one database."""

    def __init__(self, name: str, config: SqlConnectorConfig) -> None:
        self.name = name
        self.config = config
        self._db = Database(name, config)
        self._writer: Writer | None = None

    def close(self) -> None:
        self._db.dispose()
        self._writer = None

    def __enter__(self) -> SqlConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== connection, schema
    def test_connection(self) -> None:
        """Connect, reflect every configured table and column, and read one row of each object type."""
        subject = "the database"
        try:
            with self._db.connect() as conn:
                conn.execute(select(literal(1)))
            types = self._db.types(fresh=True)
            with self._db.connect() as conn:
                for mt in types.values():
                    subject = mt.label
                    conn.execute(select(raw(mt.anchor)).select_from(mt.source).limit(1)).all()
                    if mt.changes is not None:
                        subject = mt.changes.label
                        conn.execute(select(raw(mt.changes.id)).limit(1)).all()
        except SQLAlchemyError as exc:
            raise self._db.error(exc, "connection check", subject, starting=True) from None

    def discover_schema(self) -> ConnectorSchema:
        return ConnectorSchema(tuple(object_type_schema(mt) for mt in self._db.types().values()))

    # ================================================================== full import
    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """Every row of every object type, streamed (server-side cursors), with child-table values."""
        types = self._db.types()
        subject, started = "the database", False
        try:
            for mt in types.values():
                subject = mt.label
                for item in reading.full_import(self._db, mt):
                    started = True
                    yield item
        except SQLAlchemyError as exc:
            raise self._db.error(exc, "full import", subject, starting=not started) from None

    # ================================================================== export
    def _type(self, export: PendingExport) -> MappedType:
        mt = self._db.object_type(export.object_type)
        if mt is None:
            raise DataError(
                f"Object type {export.object_type!r} is not configured on SQL connector {self.name!r}",
                error_type="unknown-object-type",
            )
        return mt

    def _writer_for(self) -> Writer:
        if self._writer is None:
            self._db.types()  # connects first: the dialect knows the server version only after that
            self._writer = Writer(self.config.batch_size, self._db.engine.dialect.insert_returning)
        return self._writer

    def _export_error(
        self, exc: SQLAlchemyError, mt: MappedType | None, export: PendingExport
    ) -> IdsyncError:
        target = export.anchor or export.dn or "(new)"
        subject = f"{mt.label if mt else export.object_type} for {target!r}"
        return self._db.error(exc, f"{export.op}", subject)

    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one pending export in its own transaction (see connectors.base.Export for the contract)."""
        mt = self._type(export)
        writer = self._writer_for()
        try:
            with self._db.engine.begin() as conn:
                return writer.apply(conn, mt, export)
        except SQLAlchemyError as exc:
            raise self._export_error(exc, mt, export) from None

    def apply_batch(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]:
        """One transaction for the batch, one savepoint per export: a DataError undoes only its export.

        Anything else (connection lost, deadlock, missing table) rolls the whole batch back: every export
        gets that error and none was applied, so retrying the batch is safe.
        """
        if not exports:
            return []
        results: list[ExportOutcome | IdsyncError | None] = [None] * len(exports)
        try:
            writer = self._writer_for()
            with self._db.engine.begin() as conn:
                for i, export in enumerate(exports):
                    mt: MappedType | None = None
                    try:
                        mt = self._type(export)
                        with conn.begin_nested():
                            results[i] = writer.apply(conn, mt, export)
                    except DataError as err:
                        results[i] = err
                    except SQLAlchemyError as exc:
                        error = self._export_error(exc, mt, export)
                        if not isinstance(error, DataError):
                            raise _Abort(i, error) from None
                        results[i] = error
        except _Abort as abort:
            return self._aborted(exports, abort.index, abort.error)
        except IdsyncError as err:
            return self._aborted(exports, None, err)
        except SQLAlchemyError as exc:  # BEGIN or COMMIT failed
            return self._aborted(
                exports, None, self._db.error(exc, "batch commit", f"{len(exports)} exports")
            )
        out: list[ExportOutcome | IdsyncError] = []
        for result in results:
            assert result is not None
            out.append(result)
        return out

    @staticmethod
    def _aborted(
        exports: list[PendingExport], culprit: int | None, error: IdsyncError
    ) -> list[ExportOutcome | IdsyncError]:
        cause = f"export {exports[culprit].export_id}" if culprit is not None else "the batch"
        out: list[ExportOutcome | IdsyncError] = []
        for i in range(len(exports)):
            if i == culprit:
                out.append(error)
            else:
                out.append(
                    type(error)(
                        f"Not applied: the batch was rolled back because {cause} failed: {error.message}",
                        error_type=error.error_type,
                    )
                )
        return out


class SqlDeltaConnector(SqlConnector):
    """A SQL connector whose object types all have a delta source: adds DeltaImport."""

    def _modes(self, types: dict[str, MappedType]) -> dict[str, str]:
        return {name: "watermark" if mt.watermark is not None else "changes" for name, mt in types.items()}

    def _dump(self, positions: dict[str, watermark.Position]) -> str:
        try:
            return watermark.dump(positions)
        except TypeError as exc:
            raise FatalError(
                f"SQL connector {self.name!r}: {exc}; use a timestamp, number or text watermark column",
                error_type="no-start-bad-column",
            ) from None

    def current_watermark(self) -> str:
        """The position of every object type now (taken before a full import, to resume after it)."""
        types = self._db.types()
        positions: dict[str, watermark.Position] = {}
        subject = "the database"
        try:
            with self._db.connect() as conn:
                for name, mt in types.items():
                    subject = mt.label
                    if mt.watermark is not None:
                        positions[name] = reading.column_position(conn, mt)
                    else:
                        positions[name] = reading.change_position(conn, mt)
        except SQLAlchemyError as exc:
            raise self._db.error(exc, "watermark", subject, starting=True) from None
        return self._dump(positions)

    def delta_import(self, watermark_text: str | None) -> Iterator[DeltaItem]:
        """Changes since the watermark: full images of changed rows, deletes (change tables), checkpoints."""
        if watermark_text is None:
            yield Checkpoint(self.current_watermark())
            return
        types = self._db.types()
        positions = watermark.load(watermark_text, self._modes(types))
        every = self.config.checkpoint_every
        pending, started, subject = 0, False, "the database"
        try:
            for name, mt in types.items():
                subject = mt.changes.label if mt.changes is not None else mt.label
                position = positions[name]
                if isinstance(position, watermark.ColumnPosition):
                    items = reading.watermark_delta(self._db, mt, position)
                else:
                    items = reading.changes_delta(self._db, mt, position)
                for item in items:
                    if isinstance(item, reading._Mark):
                        if pending >= every:
                            yield Checkpoint(self._dump(positions))
                            pending = 0
                        continue
                    pending += 1
                    started = True
                    yield item
        except SQLAlchemyError as exc:
            raise self._db.error(exc, "delta import", subject, starting=not started) from None
        yield Checkpoint(self._dump(positions))


def create(name: str, config: SqlConnectorConfig) -> SqlConnector:
    """The connector for ``config``: with DeltaImport when every object type has a delta source."""
    return SqlDeltaConnector(name, config) if config.has_delta else SqlConnector(name, config)
