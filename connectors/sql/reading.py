"""Reading rows as objects: full import, delta by watermark column, delta by change table.

Rows stream through a server-side cursor (``Database.stream``); each batch's multi-valued attributes are
read with one ``IN (...)`` query per child table on a second connection, so neither a table nor a child
table is ever held in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import Row, Select, String, bindparam, cast, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from connectors.base import CursorExpired, DeletedObject, ImportedObject, ImportFailure
from connectors.sql.database import Database
from connectors.sql.mapping import AnyColumn, MappedMulti, MappedType, raw
from connectors.sql.watermark import ChangePosition, ColumnPosition, IdRanges
from schemas.records import Attrs

Item = ImportedObject | ImportFailure | DeletedObject


class _Mark:
    """Yielded between batches: everything before it is complete, the position object is up to date."""


MARK: Final = _Mark()


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def anchor_text(mt: MappedType, value: object) -> str | None:
    values = mt.anchor_codec.to_strings(value)
    return values[0] if values else None


def _select(mt: MappedType, *, with_watermark: bool = False) -> Select[Any]:
    """The raw columns an object image needs, under fixed labels (no clash with user column names)."""
    cols: list[Any] = [raw(mt.anchor).label("_a")]
    if mt.dn is not None:
        cols.append(raw(mt.dn).label("_d"))
    if with_watermark and mt.watermark is not None:
        cols.append(raw(mt.watermark).label("_w"))
    cols.extend(raw(mc.column).label(f"_c{i}") for i, mc in enumerate(mt.columns))
    return select(*cols).select_from(mt.source)


def _child_values(
    conn: Connection, m: MappedMulti, mt: MappedType, keys: list[object]
) -> dict[str, list[str]]:
    key = raw(m.key)
    stmt = select(key.label("k"), raw(m.value).label("v")).where(key.in_(keys))
    if m.name_column is not None:
        stmt = stmt.where(m.name_column == m.name)
    out: dict[str, list[str]] = {}
    for k, v in conn.execute(stmt.order_by(m.key, m.value)):
        owner = anchor_text(mt, k)
        if owner is not None:
            out.setdefault(owner, []).extend(m.codec.to_strings(v))
    return out


def images(
    conn: Connection | None, mt: MappedType, rows: Sequence[Row[Any]]
) -> list[ImportedObject | ImportFailure]:
    """Objects for rows selected by ``_select``; a row without an anchor is an ImportFailure.

    ``conn`` reads the child tables (None when the object type has no multi-valued attribute).
    """
    anchored = [(row, anchor_text(mt, row._mapping["_a"])) for row in rows]
    keys = [row._mapping["_a"] for row, anchor in anchored if anchor is not None]
    children: dict[str, dict[str, list[str]]] = {}
    if keys and mt.multis:
        assert conn is not None
        children = {m.attribute: _child_values(conn, m, mt, keys) for m in mt.multis}
    out: list[ImportedObject | ImportFailure] = []
    for row, anchor in anchored:
        values = row._mapping
        if anchor is None:
            out.append(
                ImportFailure(
                    locator=f"{mt.label}:<no anchor>",
                    error_type="import-missing-anchor",
                    message=f"A row of {mt.label} has no value in its anchor column {mt.anchor.key!r}",
                    raw=_describe(mt, row),
                )
            )
            continue
        attrs: Attrs = {}
        for i, mc in enumerate(mt.columns):
            strings = mc.codec.to_strings(values[f"_c{i}"])
            if strings:
                attrs[mc.attribute] = _dedupe(strings) if len(strings) > 1 else strings
        for m in mt.multis:
            multi = children.get(m.attribute, {}).get(anchor)
            if multi:
                attrs[m.attribute] = _dedupe(multi)
        raw_dn = values["_d"] if mt.dn is not None else None
        dn = None if raw_dn is None else str(raw_dn)
        out.append(
            ImportedObject(
                anchor=anchor, object_type=mt.name, attributes=attrs, dn=dn, locator=mt.locator(anchor)
            )
        )
    return out


def _describe(mt: MappedType, row: Row[Any]) -> str:
    values = row._mapping
    parts = [f"{mc.attribute}={values[f'_c{i}']!r}" for i, mc in enumerate(mt.columns)]
    return ", ".join(parts)[:500]


# --------------------------------------------------------------------------- full import
@contextmanager
def _side(db: Database, mt: MappedType) -> Iterator[Connection | None]:
    """A second connection for child-table lookups while the first streams rows (None: not needed)."""
    if not mt.multis:
        yield None
        return
    with db.connect() as conn:
        yield conn


def full_import(db: Database, mt: MappedType) -> Iterator[ImportedObject | ImportFailure]:
    stmt = _select(mt).order_by(raw(mt.anchor))
    with _side(db, mt) as side:
        for batch in db.stream(stmt):
            yield from images(side, mt, batch)


# --------------------------------------------------------------------------- watermark column
def column_position(conn: Connection, mt: MappedType) -> ColumnPosition:
    """The highest watermark value now, and the anchors of every row holding it."""
    assert mt.watermark is not None
    w = raw(mt.watermark)
    top = select(func.max(w)).select_from(mt.source).scalar_subquery()
    rows = conn.execute(select(raw(mt.anchor), w).select_from(mt.source).where(w == top)).all()
    if not rows:
        return ColumnPosition()
    anchors = {a for a in (anchor_text(mt, r[0]) for r in rows) if a is not None}
    return ColumnPosition(value=rows[0][1], anchors=anchors)


def watermark_delta(db: Database, mt: MappedType, pos: ColumnPosition) -> Iterator[Item | _Mark]:
    """Rows with watermark >= the stored value, minus the anchors already read at exactly that value.

    Rows are read in (watermark, anchor) order; ``pos`` is advanced after each batch to the last value
    read and the anchors read at it, so a checkpoint taken between batches misses and repeats nothing.
    """
    assert mt.watermark is not None
    w = raw(mt.watermark)
    start, skip = pos.value, frozenset(pos.anchors)
    cond = w >= bindparam("idsync_w", start, type_=NullType()) if start is not None else w.is_not(None)
    stmt = _select(mt, with_watermark=True).where(cond).order_by(w, raw(mt.anchor))
    last, at_last = start, set(skip)
    with _side(db, mt) as side:
        for batch in db.stream(stmt):
            fresh: list[Row[Any]] = []
            for row in batch:
                value, anchor = row._mapping["_w"], anchor_text(mt, row._mapping["_a"])
                if value == start and anchor in skip:
                    continue
                fresh.append(row)
                if value != last:
                    last, at_last = value, set()
                if anchor is not None:
                    at_last.add(anchor)
            yield from images(side, mt, fresh)
            pos.value, pos.anchors = last, set(at_last)
            yield MARK


# --------------------------------------------------------------------------- change table
def change_position(conn: Connection, mt: MappedType) -> ChangePosition:
    """The highest change id now, with every id of the late-commit window read."""
    ct = mt.changes
    assert ct is not None
    hi = conn.execute(select(func.max(ct.id))).scalar()
    if hi is None:
        return ChangePosition()
    seen = IdRanges()
    for (cid,) in conn.execute(select(ct.id).where(ct.id > hi - ct.window).order_by(ct.id)):
        seen.add(int(cid))
    return ChangePosition(hi=int(hi), seen=seen)


def _lookup(
    conn: Connection, mt: MappedType, anchors: list[str]
) -> dict[str, ImportedObject | ImportFailure]:
    """Current images of the rows with these anchors (absent: the row is gone)."""
    keys: list[object] = []
    for anchor in anchors:
        try:
            keys.append(mt.anchor_codec.from_string(anchor))
        except (ValueError, TypeError, OverflowError):
            continue  # cannot be a stored anchor: the row does not exist
    if not keys:
        return {}
    # A query's column types are unknown: its anchors are compared as text (an integer's digits, ...).
    column: AnyColumn = mt.anchor if mt.table is not None else cast(raw(mt.anchor), String)
    rows = conn.execute(_select(mt).where(column.in_(keys))).all()
    found: dict[str, ImportedObject | ImportFailure] = {}
    for item in images(conn, mt, rows):
        if isinstance(item, ImportedObject):
            found[item.anchor] = item
    return found


def changes_delta(db: Database, mt: MappedType, pos: ChangePosition) -> Iterator[Item | _Mark]:
    """Change rows after the stored position (re-reading the late-commit window), as current images.

    Changes of one batch are collapsed per anchor: a row whose last change is 'D', or that is gone, is a
    DeletedObject; otherwise the row as it is now is an ImportedObject (its earlier changes included).
    """
    ct = mt.changes
    assert ct is not None
    hi, seen = pos.hi, IdRanges(list(pos.seen.starts), list(pos.seen.ends))
    with db.connect() as side:
        if hi is not None:
            oldest = side.execute(select(func.min(ct.id))).scalar()
            if oldest is not None and int(oldest) > hi + 1:
                raise CursorExpired(
                    f"The change table {ct.label} was purged past the watermark (oldest change id {oldest}, "
                    f"last read {hi}): a full import is needed"
                )
        stmt = select(raw(ct.id).label("i"), raw(ct.anchor).label("a"), raw(ct.op).label("o"))
        if hi is not None:
            stmt = stmt.where(ct.id > hi - ct.window)
        for batch in db.stream(stmt.order_by(ct.id)):
            latest: dict[str, str] = {}
            failures: list[ImportFailure] = []
            for row in batch:
                cid = int(row.i)
                if cid in seen:
                    continue
                seen.add(cid)
                hi = cid if hi is None else max(hi, cid)
                op = str(row.o).strip().upper() if row.o is not None else ""
                anchor = None if row.a is None else str(row.a)
                locator = f"{ct.label}:{cid}"
                if anchor is None or anchor == "":
                    failures.append(
                        ImportFailure(
                            locator=locator,
                            error_type="import-missing-anchor",
                            message=f"Change {cid} in {ct.label} names no anchor",
                        )
                    )
                    continue
                if op not in ("I", "U", "D"):
                    failures.append(
                        ImportFailure(
                            locator=locator,
                            error_type="change-table-bad-op",
                            message=f"Change {cid} in {ct.label} has op {row.o!r}, expected 'I', 'U' or 'D'",
                        )
                    )
                    continue
                anchor = mt.anchor_codec.normalize(anchor)
                latest.pop(anchor, None)  # keep the order of each anchor's last change
                latest[anchor] = op
            live = _lookup(side, mt, [a for a, op in latest.items() if op != "D"])
            yield from failures
            for anchor, op in latest.items():
                image = live.get(anchor) if op != "D" else None
                if image is not None:
                    yield image
                else:
                    yield DeletedObject(anchor=anchor, object_type=mt.name, locator=mt.locator(anchor))
            if hi is not None:
                seen.prune(hi - ct.window)
            pos.hi, pos.seen = hi, IdRanges(list(seen.starts), list(seen.ends))
            yield MARK
