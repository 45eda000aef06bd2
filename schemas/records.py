"""Public topic contracts: what connectors, operators and downstream systems exchange with idsync.

These pydantic models are the contracts (``idsync schema export`` writes their JSON Schemas; connectors
build and receive them). The stages read and write the same records through msgspec mirrors
(``schemas.wire``, checked field by field against these models), and talk to each other with internal
messages (``schemas.messages``), which are not contracts.

Attribute values are always lists of strings (``Attrs``): single-valued attributes are one-element lists,
an empty list is null. Binary values are base64 text, prefixed by the connector's schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Attrs = dict[str, list[str]]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Contract):
    """Where a change record came from."""

    connector: str
    dn: str | None = None
    #: Connector-native position (LDAP cookie / CSN, SQL watermark, file checksum); opaque to the engine.
    watermark: str = ""
    #: Monotone per object within a connector: a record with a lower version is stale.
    version: int
    #: Unique per emitted change; a record with the event id already applied is a duplicate.
    event_id: str
    run_id: str | None = None
    ts_ms: int
    #: Where a human finds the object in the source: "hr.csv:42", a DN, a primary key.
    locator: str | None = None


def _added_and_removed(added: Attrs | None, removed: Attrs | None) -> str | None:
    """The first attribute with a value both added and removed, as a problem (None: none)."""
    for name in sorted(set(added or {}) & set(removed or {})):
        if set((added or {})[name]) & set((removed or {})[name]):
            return f"attribute {name!r}: a value is both added and removed"
    return None


def value_changes_problem(
    version: int,
    op: str,
    after: Attrs | None,
    changes: list[str] | None,
    added: Attrs | None,
    removed: Attrs | None,
) -> str | None:
    """What is wrong with a change record's value-level changes (``added``/``removed``), None if nothing.
    One rule for the contract and its mirror (``schemas.wire``)."""
    if added is None and removed is None:
        return None
    if version < 2:
        return "added/removed (value-level changes) need version 2"
    if op != "u":
        return f"added/removed (value-level changes) are for op 'u' only, not {op!r}"
    both = _added_and_removed(added, removed)
    if both is not None:
        return both
    named = set(added or {}) | set(removed or {})
    whole = set(after or {}) | set(changes or ())
    overlap = sorted(named & whole)
    if overlap:
        return f"attribute {overlap[0]!r} is given both whole (after/changes) and by value (added/removed)"
    if changes is None:
        # Without it, ``after`` would be the whole image and the record could not say which values changed.
        return "added/removed (value-level changes) need changes: the attributes given whole, possibly none"
    return None


class ChangeRecord(_Contract):
    """One object's change, Debezium-like: ``op`` c/u/d, or r for a full-import (snapshot) read.

    Version 2 adds value-level changes (``added``/``removed``); a record without them is the same in both
    versions. A reader of version 1 refuses version 2 rather than miss a membership change."""

    version: Literal[1, 2] = 1
    op: Literal["c", "u", "d", "r"]
    anchor: str = Field(min_length=1)
    object_type: str
    before: Attrs | None = None
    #: Full image after the change (None for deletes); with ``changes``, only the changed attributes.
    after: Attrs | None = None
    #: Names of changed attributes when the connector knows them; None means "compare the full image".
    changes: list[str] | None = None
    source: Source
    #: Version 2, ``op`` "u": values a multi-valued attribute gained, per attribute, as an LDAP modify's
    #: add, AD DirSync's incremental values or a SCIM PATCH ``add`` give them. Its other values stay as
    #: the connector space holds them: one member added to a 50,000-member group is one value here, not
    #: the group's whole image. An attribute given by value is not also in ``after`` or ``changes``.
    added: Attrs | None = None
    #: Version 2, ``op`` "u": values a multi-valued attribute lost, per attribute (DN-valued attributes
    #: match as DNs: case and spaces around separators do not matter).
    removed: Attrs | None = None

    @model_validator(mode="after")
    def _value_changes(self) -> ChangeRecord:
        problem = value_changes_problem(
            self.version, self.op, self.after, self.changes, self.added, self.removed
        )
        if problem is not None:
            raise ValueError(problem)
        return self


class RunMarker(_Contract):
    """Brackets a full import on every partition of ``import.<connector>``."""

    version: Literal[1] = 1
    op: Literal["run-start", "run-end"]
    run_id: str
    connector: str
    kind: Literal["full", "delta"] = "full"
    partition: int
    #: The run's version (its records carry it): objects changed after it are newer than the snapshot.
    run_version: int
    ts_ms: int
    #: Objects the connector emitted in the whole run (on run-end); for reporting.
    count: int | None = None


class WatermarkRecord(_Contract):
    """A connector's stored delta position (``watermarks`` topic, compacted, key: connector name).

    Written only after the broker acked every change record before that position (at-least-once).
    """

    version: Literal[1] = 1
    connector: str
    #: Connector-native and opaque (an LDAP sync cookie, a SQL watermark).
    watermark: str
    #: How it was reached: a delta or follow checkpoint, or the start of a full refresh.
    via: Literal["delta", "follow", "full"]
    ts_ms: int


ImportMessage = Annotated[ChangeRecord | RunMarker, Field(discriminator="op")]


class AttrChange(_Contract):
    """An attribute-level export change."""

    op: Literal["replace", "add", "delete"]
    values: list[str]


class PendingExport(_Contract):
    """One change to apply to a connected system (``export.<connector>``, keyed by mv_id)."""

    version: Literal[1] = 1
    export_id: str
    #: Per (mv_id, connector) sequence; the worker applies them in order and skips ones already applied.
    seq: int
    connector: str
    mv_id: str
    op: Literal["add", "update", "rename", "delete"]
    object_type: str
    anchor: str | None = None
    dn: str
    new_dn: str | None = None
    attributes: dict[str, AttrChange] = Field(default_factory=dict)
    #: Old values per attribute, for previews and for `exported-change-not-reimported` reports.
    old: Attrs = Field(default_factory=dict)
    ts_ms: int


class ApproveDeletes(_Contract):
    """An operator releases the deletes held by the deletion threshold (``idsync approve-deletes``).

    Published on every partition of ``export.<connector>`` with key ``APPROVE_DELETES_KEY``: each
    partition's worker meets it in order, so it releases exactly the deletes held before it.
    """

    kind: Literal["approve-deletes"] = "approve-deletes"
    version: Literal[1] = 1
    approval_id: str
    connector: str
    partition: int
    #: Who approved (the operating-system user that ran the command), for the audit trail.
    approved_by: str | None = None
    ts_ms: int


#: Key of ``ApproveDeletes`` records on ``export.<connector>`` (pending exports are keyed by mv_id).
APPROVE_DELETES_KEY = b"__approve-deletes__"


class ErrorRecord(_Contract):
    """A per-object error: what went wrong and where (step, algorithm step), enough to find the object."""

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
    #: Offending record (secrets redacted), for the dead-letter queue.
    record: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    ts_ms: int


def feed_value_changes_problem(
    version: int,
    op: str,
    attributes: Attrs,
    changed: list[str],
    added: Attrs | None,
    removed: Attrs | None,
    counts: dict[str, int] | None,
) -> str | None:
    """What is wrong with an ``mv.changes`` record's value-level changes (``added``/``removed``,
    ``counts``), None if nothing. One rule for the contract and its mirror (``schemas.wire``)."""
    if added is None and removed is None:
        return None if counts is None else "counts need added/removed (value-level changes)"
    if version < 2:
        return "added/removed (value-level changes) need version 2"
    if op != "update":
        return f"added/removed (value-level changes) are for op 'update' only, not {op!r}"
    both = _added_and_removed(added, removed)
    if both is not None:
        return both
    named = set(added or {}) | set(removed or {})
    whole = sorted(named & set(attributes))
    if whole:
        return f"attribute {whole[0]!r} is given both whole (attributes) and by value (added/removed)"
    unnamed = sorted(named - set(changed))
    if unnamed:
        return f"attribute {unnamed[0]!r} is given by value but not named in changed"
    if counts is None or set(counts) != named or any(n < 0 for n in counts.values()):
        return "counts must give, for each attribute given by value, how many values it holds after"
    return None


def fold_values(previous: Attrs, attributes: Attrs, added: Attrs | None, removed: Attrs | None) -> Attrs:
    """The whole image an ``mv.changes`` record gives (docs/topics.md, folding the feed): ``attributes``,
    and each attribute a version 2 record gives by value (``added``/``removed``) as the object's previous
    image (``previous``) held it, less ``removed``, plus ``added`` — as a set, in sorted order (as the
    engine keeps a multi-valued reference attribute). A version 1 record (neither) is its own image."""
    image = dict(attributes)
    for name in {*(added or {}), *(removed or {})}:
        gone = set((removed or {}).get(name, []))
        kept = {v for v in previous.get(name, []) if v not in gone}
        image[name] = sorted(kept | set((added or {}).get(name, [])))
    return image


class MVChange(_Contract):
    """A metaverse change: the public ``mv.changes`` feed for downstream systems (JSON Schema published).

    Version 2 adds value-level changes (``added``/``removed``) for a large multi-valued attribute (a
    group's members) whose change the engine knows value by value; a record without them is the same in
    both versions. A reader of version 1 refuses version 2 rather than miss a membership change
    (docs/topics.md: how to fold the feed)."""

    version: Literal[1, 2] = 1
    op: Literal["create", "update", "delete"]
    mv_id: str
    object_type: str
    #: Full image after the change (empty for deletes); in version 2, every attribute but those given by
    #: value in ``added``/``removed``, which keep the values the object's previous record gave them, with
    #: these changes.
    attributes: Attrs
    #: Attributes whose values changed in this event.
    changed: list[str]
    #: Connectors joined to the object after the change.
    connectors: list[str]
    #: The connector whose change caused this one.
    cause: str | None = None
    ts_ms: int
    #: Version 2, ``op`` "update": values a multi-valued attribute gained, per attribute. An attribute given
    #: by value is not in ``attributes``, and is named in ``changed``.
    added: Attrs | None = None
    #: Version 2, ``op`` "update": values a multi-valued attribute lost, per attribute.
    removed: Attrs | None = None
    #: Version 2: how many values each attribute given by value holds after the change. A consumer whose
    #: folded value holds another number missed a record, or folded one twice in another order, and
    #: should take the attribute from the object's next whole record.
    counts: dict[str, int] | None = None

    @model_validator(mode="after")
    def _value_changes(self) -> MVChange:
        problem = feed_value_changes_problem(
            self.version, self.op, self.attributes, self.changed, self.added, self.removed, self.counts
        )
        if problem is not None:
            raise ValueError(problem)
        return self


class ExportConfirmed(_Contract):
    """An export whose values the following import showed (or a divergence reported)."""

    kind: Literal["confirmed"] = "confirmed"
    connector: str
    mv_id: str
    export_id: str
    ts_ms: int
