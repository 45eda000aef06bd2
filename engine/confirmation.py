"""Export confirmation: an exported value is unconfirmed until an import shows it (invariant 6)."""

from __future__ import annotations

from engine.values import dn_key, dn_keys, same_values
from schemas.records import Attrs
from schemas.state import LedgerEntry, TargetState
from schemas.wire import ErrorRecord, ExportConfirmed

DN_KEY = "__dn__"
DELETED_KEY = "__deleted__"


def export_id(mv_id: str, connector: str, seq: int) -> str:
    """The id of a pending export (and of what confirms it): the object, the target, the sequence."""
    return f"{mv_id}:{connector}:{seq}"


def casefold_keys(attrs: Attrs) -> Attrs:
    """Directories answer attribute names in their own case: compare names case-insensitively."""
    return {k.casefold(): v for k, v in attrs.items()}


def confirm_import(
    target: TargetState,
    connector: str,
    mv_id: str,
    image: Attrs,
    dn: str | None,
    ts_ms: int,
    final: bool = True,
    read_ts_ms: int | None = None,
) -> tuple[list[ExportConfirmed], list[ErrorRecord]]:
    """Compare applied, unconfirmed exports with an imported image. Mutates ``target``.

    With ``final`` (an import that came after the export), a value that differs is reported as
    ``exported-change-not-reimported`` with both values and dropped from the ledger, so the next outbound
    evaluation exports it again. Without it (an image older than the export), only matches count.

    ``read_ts_ms``: when the connector read the image (its change record's source time). An export
    applied after that is not final for it: an import running while the export worker drains a backlog
    reads an entry, the export changes it, and the image arrives after the export's result — it shows
    the value from before, not a failed export. A later import decides."""
    folded = casefold_keys(image)
    errors: list[ErrorRecord] = []
    applied = {e.seq for e in target.ledger.values() if e.applied}
    for attr, entry in list(target.ledger.items()):
        if not entry.applied or attr == DELETED_KEY:
            continue
        if attr == DN_KEY:
            seen = [dn] if dn else []
            ok = bool(seen) and dn_key(seen[0]) == dn_key(entry.values[0])
        else:
            seen = folded.get(attr.casefold(), [])
            ok = _shows(seen, entry)
        read_before = (
            read_ts_ms is not None and entry.applied_ts_ms is not None and read_ts_ms < entry.applied_ts_ms
        )
        if not ok and (not final or read_before):
            continue
        if not ok:
            # Dropped: the target does not hold what the ledger said; the next plan is made whole.
            target.settled_by = None
            errors.append(
                ErrorRecord(
                    step_id="metaverse.confirm",
                    error_type="exported-change-not-reimported",
                    algorithm_step="export-confirmation",
                    connector=connector,
                    anchor=target.anchor,
                    mv_id=mv_id,
                    message=(
                        f"{connector} {dn or target.dn}: exported {attr} {_exported(entry)} "
                        f"but the import shows {_short(seen)}"
                    ),
                    ts_ms=ts_ms,
                )
            )
        del target.ledger[attr]
    if target.pending_dn is not None and DN_KEY not in target.ledger:
        target.pending_dn = None
    remaining = {e.seq for e in target.ledger.values()}
    return (
        [
            ExportConfirmed(
                connector=connector, mv_id=mv_id, export_id=export_id(mv_id, connector, seq), ts_ms=ts_ms
            )
            for seq in sorted(applied - remaining)
        ],
        errors,
    )


def _short(values: list[str], limit: int = 10) -> str:
    """Values for a message: a group's members are not all worth printing."""
    if len(values) <= limit:
        return repr(values)
    return f"{values[:limit]!r} and {len(values) - limit} more"


def _exported(entry: LedgerEntry) -> str:
    if entry.op == "delta":
        return f"+{_short(entry.values)} -{_short(entry.removed)}"
    return f"={_short(entry.values)}"


def _shows(seen: list[str], entry: LedgerEntry) -> bool:
    """Does an imported value set show what the ledger entry exported?"""
    if entry.op == "delta":
        keys = dn_keys if entry.dn_valued else list
        have = set(keys(seen))
        return all(k in have for k in keys(entry.values)) and not any(k in have for k in keys(entry.removed))
    if entry.dn_valued:
        return sorted(dn_keys(seen)) == sorted(dn_keys(entry.values))
    return same_values(seen, entry.values)


def confirm_delete(target: TargetState, connector: str, mv_id: str, ts_ms: int) -> list[ExportConfirmed]:
    """The target object's deletion was imported: an applied delete export is confirmed."""
    entry = target.ledger.pop(DELETED_KEY, None)
    if entry is None or not entry.applied:
        return []
    return [
        ExportConfirmed(
            connector=connector, mv_id=mv_id, export_id=export_id(mv_id, connector, entry.seq), ts_ms=ts_ms
        )
    ]
