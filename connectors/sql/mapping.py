"""Object types mapped onto reflected tables: which column holds the anchor, each attribute, the deltas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    FromClause,
    MetaData,
    Table,
    UniqueConstraint,
    column,
    inspect,
    text,
    type_coerce,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from connectors.base import AttributeSchema, ObjectTypeSchema
from connectors.sql.config import ChangeTableConfig, MultiValuedConfig, ObjectTypeConfig
from connectors.sql.values import TEXT, Codec, codec_for
from schemas.errors import FatalError

AnyColumn = ColumnElement[Any]
TableColumn = Column[Any]


def raw(col: AnyColumn) -> AnyColumn:
    """``col`` without SQLAlchemy's type processing: the value exactly as the driver returns it."""
    return type_coerce(col, NullType())


@dataclass(frozen=True, slots=True)
class MappedColumn:
    attribute: str
    column: AnyColumn
    codec: Codec


@dataclass(frozen=True, slots=True)
class MappedMulti:
    """A multi-valued attribute: rows (key, value) of a child table, optionally filtered by a name column."""

    attribute: str
    table: Table
    key: TableColumn
    key_codec: Codec
    value: TableColumn
    codec: Codec
    name_column: TableColumn | None
    name: str

    def owned_by(self, key: object) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [self.key == key]
        if self.name_column is not None:
            where.append(self.name_column == self.name)
        return where


@dataclass(frozen=True, slots=True)
class ChangeTable:
    table: Table
    label: str
    id: AnyColumn
    anchor: AnyColumn
    op: AnyColumn
    window: int


@dataclass(frozen=True, slots=True)
class MappedType:
    name: str
    #: The table, or the configured query as a subquery.
    source: FromClause
    #: None for a query: read-only.
    table: Table | None
    #: "hr.people" or "query person": where a human finds the rows.
    label: str
    anchor: AnyColumn
    anchor_codec: Codec
    columns: tuple[MappedColumn, ...]
    multis: tuple[MappedMulti, ...]
    dn: AnyColumn | None
    watermark: AnyColumn | None
    changes: ChangeTable | None
    #: Column sets that identify a row (primary key, unique constraints/indexes), the anchor's first.
    unique_keys: tuple[tuple[AnyColumn, ...], ...]

    def column_for(self, attribute: str) -> MappedColumn | None:
        return next((c for c in self.columns if c.attribute == attribute), None)

    def multi_for(self, attribute: str) -> MappedMulti | None:
        return next((m for m in self.multis if m.attribute == attribute), None)

    def locator(self, anchor: str) -> str:
        return f"{self.label}:{anchor}"


def _label(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _find(columns: dict[str, AnyColumn], name: str, where: str, object_type: str) -> AnyColumn:
    """The column called ``name`` (exactly, else the one matching case-insensitively)."""
    if name in columns:
        return columns[name]
    folded = [c for n, c in columns.items() if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise FatalError(
        f"Object type {object_type!r}: column {name!r} is not in {where} (columns: {', '.join(columns)})",
        error_type="no-start-bad-column",
    )


def _reflect(conn: Connection, name: str, schema: str | None) -> Table:
    return Table(name, MetaData(), schema=schema, autoload_with=conn)


def _unique_keys(conn: Connection, table: Table, anchor: AnyColumn) -> tuple[tuple[AnyColumn, ...], ...]:
    keys: list[tuple[AnyColumn, ...]] = [(anchor,)]
    if table.primary_key.columns:
        keys.append(tuple(table.primary_key.columns))
    keys.extend(tuple(c.columns) for c in table.constraints if isinstance(c, UniqueConstraint) and c.columns)
    keys.extend(tuple(index.columns) for index in table.indexes if index.unique and index.columns)
    if conn.dialect.name == "sqlite":
        # A column-level UNIQUE is an automatic index that table reflection leaves out.
        for index in inspect(conn).get_indexes(table.name, table.schema, include_auto_indexes=True):
            names = index["column_names"]
            if index["unique"] and names and all(n in table.c for n in names if n):
                keys.append(tuple(table.c[n] for n in names if n))
    out: list[tuple[AnyColumn, ...]] = []
    for key in keys:
        if all(isinstance(c, Column) for c in key) and {c.name for c in key} not in [
            {c.name for c in k} for k in out
        ]:
            out.append(key)
    return tuple(out)


def _query_source(conn: Connection, query: str) -> tuple[FromClause, list[str]]:
    """The configured query as a subquery, with the column names it returns."""
    names = list(conn.execute(text(f"SELECT * FROM ({query}) idsync_probe WHERE 1 = 0")).keys())
    source = text(query).columns(*[column(n) for n in names]).subquery("idsync_q")
    return source, names


def _multi(
    conn: Connection, type_name: str, attribute: str, cfg: MultiValuedConfig, default_schema: str | None
) -> MappedMulti:
    schema = cfg.child_schema if cfg.child_schema is not None else default_schema
    table = _reflect(conn, cfg.child_table, schema)
    where = f"child table {_label(schema, cfg.child_table)}"
    cols: dict[str, AnyColumn] = {c.name: c for c in table.columns}
    key = cast(TableColumn, _find(cols, cfg.child_key, where, type_name))
    value = cast(TableColumn, _find(cols, cfg.value, where, type_name))
    name_column = cast(TableColumn, _find(cols, cfg.attribute, where, type_name)) if cfg.attribute else None
    return MappedMulti(
        attribute=attribute,
        table=table,
        key=key,
        key_codec=codec_for(key.type),
        value=value,
        codec=codec_for(value.type),
        name_column=name_column,
        name=cfg.attribute_value or attribute,
    )


def _change_table(
    conn: Connection, type_name: str, cfg: ChangeTableConfig, default_schema: str | None
) -> ChangeTable:
    schema = cfg.schema_ if cfg.schema_ is not None else default_schema
    table = _reflect(conn, cfg.table, schema)
    label = _label(schema, cfg.table)
    cols: dict[str, AnyColumn] = {c.name: c for c in table.columns}
    where = f"change table {label}"
    return ChangeTable(
        table=table,
        label=label,
        id=_find(cols, cfg.id_column, where, type_name),
        anchor=_find(cols, cfg.anchor_column, where, type_name),
        op=_find(cols, cfg.op_column, where, type_name),
        window=cfg.late_commit_window,
    )


def map_object_type(conn: Connection, name: str, cfg: ObjectTypeConfig) -> MappedType:
    """Reflect the object type's tables and check every configured column exists.

    SQLAlchemy errors (no such table, cannot connect) propagate to the caller, which maps them.
    """
    table: Table | None = None
    if cfg.table is not None:
        table = _reflect(conn, cfg.table, cfg.schema_)
        source: FromClause = table
        label = _label(cfg.schema_, cfg.table)
        cols: dict[str, AnyColumn] = {c.name: c for c in table.columns}
        where = f"table {label}"
    else:
        assert cfg.query is not None  # the config validator guarantees table xor query
        source, names = _query_source(conn, cfg.query)
        label = f"query {name}"
        cols = {n: source.c[n] for n in names}
        where = f"the columns of the query of {name!r}"

    def codec(col: AnyColumn) -> Codec:
        return codec_for(col.type) if table is not None else TEXT

    anchor = _find(cols, cfg.anchor, where, name)
    mapping = cfg.columns if cfg.columns is not None else {n: n for n in cols}
    columns = tuple(
        MappedColumn(attribute, col, codec(col))
        for attribute, col_name in mapping.items()
        for col in [_find(cols, col_name, where, name)]
    )
    return MappedType(
        name=name,
        source=source,
        table=table,
        label=label,
        anchor=anchor,
        anchor_codec=codec(anchor),
        columns=columns,
        multis=tuple(_multi(conn, name, a, m, cfg.schema_) for a, m in cfg.multi_valued.items()),
        dn=_find(cols, cfg.dn_column, where, name) if cfg.dn_column else None,
        watermark=_find(cols, cfg.watermark_column, where, name) if cfg.watermark_column else None,
        changes=_change_table(conn, name, cfg.change_table, cfg.schema_) if cfg.change_table else None,
        unique_keys=_unique_keys(conn, table, anchor) if table is not None else ((anchor,),),
    )


def object_type_schema(mt: MappedType) -> ObjectTypeSchema:
    """What an object type offers, from the reflected column types."""
    anchor_attribute: str | None = None
    attributes: list[AttributeSchema] = []
    for mc in mt.columns:
        if mc.column is mt.anchor:
            anchor_attribute = mc.attribute
        col = mc.column
        required = (
            isinstance(col, Column)
            and not col.nullable
            and col.server_default is None
            and col.default is None
            and not (col.primary_key and col.autoincrement in (True, "auto") and mc.codec.kind == "integer")
        )
        attributes.append(AttributeSchema(mc.attribute, mc.codec.syntax, required=required))
    attributes.extend(AttributeSchema(m.attribute, m.codec.syntax, multi_valued=True) for m in mt.multis)
    anchor_name = anchor_attribute or getattr(mt.anchor, "name", None)
    return ObjectTypeSchema(name=mt.name, attributes=tuple(attributes), anchor=anchor_name)
