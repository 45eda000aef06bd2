"""The public contracts as the stages read and write them: msgspec mirrors of ``schemas.records``.

The pydantic models in ``schemas.records`` are the contracts (documented there, JSON Schema, the
connector SDK). On the hot path pydantic is the cost: validating a change record takes ~10 µs, building
and dumping a pending export of eleven attributes ~40 µs, against a budget of ~40 µs for a whole record
through the pipeline (docs/benchmarks.md). These structs decode and encode the same JSON ~5-20x faster.

Each mirror has the same fields, types and defaults as its model, in the same order; decoding
validates like the model does (types, literals, ``anchor`` non-empty, unknown fields refused).
``tests/schemas/test_wire.py`` checks every pair field by field and round-trips records both ways.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from schemas.records import APPROVE_DELETES_KEY, Attrs, feed_value_changes_problem, value_changes_problem


class _Public(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    pass


class Source(_Public, frozen=True, kw_only=True):
    connector: str
    dn: str | None = None
    watermark: str = ""
    version: int
    event_id: str
    run_id: str | None = None
    ts_ms: int
    locator: str | None = None


class ChangeRecord(_Public, frozen=True, kw_only=True):
    version: Literal[1, 2] = 1
    op: Literal["c", "u", "d", "r"]
    anchor: Annotated[str, Meta(min_length=1)]
    object_type: str
    before: Attrs | None = None
    after: Attrs | None = None
    changes: list[str] | None = None
    source: Source
    added: Attrs | None = None
    removed: Attrs | None = None

    def __post_init__(self) -> None:
        # Runs on decoding: a ValueError becomes the decoder's ValidationError, as the model's validator.
        if self.added is not None or self.removed is not None:
            problem = value_changes_problem(
                self.version, self.op, self.after, self.changes, self.added, self.removed
            )
            if problem is not None:
                raise ValueError(problem)


class RunMarker(_Public, frozen=True, kw_only=True):
    version: Literal[1] = 1
    op: Literal["run-start", "run-end"]
    run_id: str
    connector: str
    kind: Literal["full", "delta"] = "full"
    partition: int
    run_version: int
    ts_ms: int
    count: int | None = None


class AttrChange(_Public, frozen=True, kw_only=True):
    op: Literal["replace", "add", "delete"]
    values: list[str]


class PendingExport(_Public, frozen=True, kw_only=True):
    version: Literal[1] = 1
    export_id: str
    seq: int
    connector: str
    mv_id: str
    op: Literal["add", "update", "rename", "delete"]
    object_type: str
    anchor: str | None = None
    dn: str
    new_dn: str | None = None
    attributes: dict[str, AttrChange] = {}
    old: Attrs = {}
    ts_ms: int


class ApproveDeletes(_Public, frozen=True, kw_only=True):
    kind: Literal["approve-deletes"] = "approve-deletes"
    version: Literal[1] = 1
    approval_id: str
    connector: str
    partition: int
    approved_by: str | None = None
    ts_ms: int


class ErrorRecord(_Public, frozen=True, kw_only=True):
    version: Literal[1] = 1
    step_id: str
    error_type: str
    algorithm_step: str
    connector: str | None = None
    anchor: str | None = None
    locator: str | None = None
    mv_id: str | None = None
    message: str
    detail: str | None = None
    record: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    ts_ms: int


class MVChange(_Public, frozen=True, kw_only=True):
    version: Literal[1, 2] = 1
    op: Literal["create", "update", "delete"]
    mv_id: str
    object_type: str
    attributes: Attrs
    changed: list[str]
    connectors: list[str]
    cause: str | None = None
    ts_ms: int
    added: Attrs | None = None
    removed: Attrs | None = None
    counts: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.added is not None or self.removed is not None or self.counts is not None:
            problem = feed_value_changes_problem(
                self.version,
                self.op,
                self.attributes,
                self.changed,
                self.added,
                self.removed,
                self.counts,
            )
            if problem is not None:
                raise ValueError(problem)


class ExportConfirmed(_Public, frozen=True, kw_only=True):
    kind: Literal["confirmed"] = "confirmed"
    connector: str
    mv_id: str
    export_id: str
    ts_ms: int


#: mirror -> the pydantic contract it mirrors (tests/schemas/test_wire.py; ``schemas.codec`` converts).
MIRRORS: dict[type[Struct], str] = {
    Source: "Source",
    ChangeRecord: "ChangeRecord",
    RunMarker: "RunMarker",
    AttrChange: "AttrChange",
    PendingExport: "PendingExport",
    ApproveDeletes: "ApproveDeletes",
    ErrorRecord: "ErrorRecord",
    MVChange: "MVChange",
    ExportConfirmed: "ExportConfirmed",
}

__all__ = [
    "APPROVE_DELETES_KEY",
    "MIRRORS",
    "ApproveDeletes",
    "AttrChange",
    "ChangeRecord",
    "ErrorRecord",
    "ExportConfirmed",
    "MVChange",
    "PendingExport",
    "RunMarker",
    "Source",
]
