"""The configuration file: connectors, metaverse object types, inbound and outbound rules.

One YAML file, validated at startup (``streams.config.load_config``). Anything wrong names its field path.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

from schemas.expressions import ExpressionError, compile_expression

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z][A-Za-z0-9_-]*)\}")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- connectors
class DeletionThresholdConfig(_Config):
    """Delete protection of an export target (Entra Connect's deletion threshold; docs/export.md).

    At most ``count`` deletes (and at most ``percent`` % of the target's connector-space objects) leave
    per ``window_s``; the deletes past it are held until ``idsync approve-deletes <connector>``.
    """

    enabled: bool = True
    count: int | None = Field(default=500, ge=1)
    percent: float | None = Field(default=None, gt=0, le=100)
    window_s: int = Field(default=3600, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> DeletionThresholdConfig:
        if self.enabled and self.count is None and self.percent is None:
            raise ValueError("give count and/or percent, or enabled: false to turn the threshold off")
        return self


class ConnectorConfigBase(_Config):
    """What every connector's config model has. Each kind subclasses it with ``kind: Literal["<kind>"]``.

    Built-in kinds are registered below; third-party kinds register through the ``idsync.connectors``
    entry point (``connectors.registry``), which calls :func:`register_connector_config`.
    """

    kind: str
    #: Applies when the connector is an export target (outbound rules name it).
    deletion_threshold: DeletionThresholdConfig = Field(default_factory=DeletionThresholdConfig)
    #: How this connector's imports run (docs/running-imports.md): ``full`` (bracketed full imports by
    #: ``idsync sync`` / ``idsync import``), ``delta`` (``idsync import`` runs a delta since the stored
    #: watermark) or ``follow`` (``idsync worker`` also follows its changes continuously). The connector
    #: must have the capability; that is checked when the connector is built.
    import_mode: Literal["full", "delta", "follow"] = "full"
    #: Applies when the connector is an export target: how many connections (connector instances, each
    #: in its own thread) a worker applies this target's pending exports over. Each takes a share of the
    #: worker's partitions, so one object's exports stay in order on one connection, as they would with
    #: one worker per partition. 1 (the default for a kind that does not say otherwise): one export at a
    #: time. A kind whose instances cannot write at once (a file) keeps 1.
    export_connections: int = Field(default=1, ge=1, le=64)


_CONNECTOR_CONFIGS: dict[str, type[ConnectorConfigBase]] = {}


def _kind_of(model: type[ConnectorConfigBase]) -> str:
    field = model.model_fields.get("kind")
    args: tuple[object, ...] = tuple(getattr(field.annotation, "__args__", ())) if field is not None else ()
    kind = args[0] if len(args) == 1 else None
    if not isinstance(kind, str):
        raise TypeError(f"{model.__name__}.kind must be annotated Literal['<kind>']")
    return kind


def register_connector_config(model: type[ConnectorConfigBase]) -> str:
    """Make a connector kind's config model known to the config loader; returns the kind."""
    kind = _kind_of(model)
    known = _CONNECTOR_CONFIGS.get(kind)
    if known is not None and known is not model:
        raise ValueError(f"connector kind {kind!r} is registered twice ({known.__name__}, {model.__name__})")
    _CONNECTOR_CONFIGS[kind] = model
    return kind


def connector_config_models() -> dict[str, type[ConnectorConfigBase]]:
    """Every registered connector kind and its config model."""
    return dict(_CONNECTOR_CONFIGS)


class CsvConnectorConfig(ConnectorConfigBase):
    """A CSV file (an HR feed): full import, one row per object."""

    kind: Literal["csv"]
    #: Export file, written whole and atomically by every export (docs/connectors/files.md). Declared
    #: before ``path`` so that ``path`` may name it before the first export creates it.
    export_path: Path | None = None
    path: Path
    object_type: str = "person"
    anchor: str = Field(description="Column that holds the immutable anchor (e.g. employee_id)")
    delimiter: str = ","
    encoding: str = "utf-8"
    #: Columns whose values hold several values separated by this character.
    multi_value_separator: str | None = None
    multi_valued: list[str] = Field(default_factory=list)
    #: Header mapping ``{attribute: column}``: a mapped column's values import as (and export from) the
    #: attribute; unmapped columns keep their header as the name. An export file has exactly the anchor
    #: column, the ``dn_column`` and these columns.
    columns: dict[str, str] = Field(default_factory=dict)
    #: Column holding each object's DN: imported as the object's DN (not as an attribute), written by exports.
    dn_column: str | None = None

    @field_validator("export_path")
    @classmethod
    def _export_dir(cls, v: Path | None) -> Path | None:
        if v is not None and v.is_dir():
            raise ValueError("is a directory, not a file")
        if v is not None and not v.parent.is_dir():
            raise ValueError(f"directory {str(v.parent)!r} not found")
        return v

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path, info: Any) -> Path:
        export = info.data.get("export_path")
        if not v.is_file() and not (export is not None and v.resolve() == export.resolve()):
            raise ValueError("file not found")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("must be a single character")
        return v

    @field_validator("columns")
    @classmethod
    def _mapping(cls, v: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for attribute, column in v.items():
            if not attribute.strip() or not column.strip():
                raise ValueError("attribute and column names must not be empty")
            if column in seen:
                raise ValueError(f"column {column!r} is mapped twice ({seen[column]!r}, {attribute!r})")
            seen[column] = attribute
        return v

    @model_validator(mode="after")
    def _export_layout(self) -> CsvConnectorConfig:
        if self.dn_column is not None and (
            self.dn_column == self.anchor or self.dn_column in self.columns.values()
        ):
            raise ValueError(f"dn_column {self.dn_column!r} must not also be the anchor or a mapped column")
        if self.export_path is not None and not self.columns:
            raise ValueError(
                "export_path needs columns ({attribute: column}): they are the export file's header"
            )
        return self


class LdapConnectorConfig(ConnectorConfigBase):
    """An LDAP directory (OpenLDAP, 389-DS, ...), through ldap3."""

    kind: Literal["ldap"]
    uri: str = Field(pattern=r"^ldaps?://")
    bind_dn: str | None = None
    password: SecretStr | None = None
    base_dn: str
    #: Object types this connector imports, mapped to their LDAP object class.
    object_classes: dict[str, str] = Field(default_factory=lambda: {"person": "inetOrgPerson"})
    anchor_attribute: str = "entryUUID"
    page_size: int = Field(default=500, ge=1, le=10000)
    start_tls: bool = False
    verify_tls: bool = True
    ca_file: Path | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Attributes requested on import; None = all user attributes.
    attributes: list[str] | None = None
    #: Create missing parent containers (organizationalUnit) when an add fails with no-such-object.
    create_parents: bool = True
    #: A directory serves several connections at once, and each export waits for its round trips.
    export_connections: int = Field(default=4, ge=1, le=64)
    #: Directory dialect: "ad" = Active Directory (objectGUID anchor, DirSync/uSNChanged deltas, unicodePwd,
    #: userAccountControl, AD error texts: connectors/ldap/ad.py, docs/connectors/active-directory.md).
    dialect: Literal["openldap", "ad"] = "openldap"
    #: AD delta import: the DirSync control (needs "Replicating Directory Changes") or uSNChanged polling.
    ad_delta: Literal["dirsync", "usnchanged"] = "dirsync"
    #: Delta import and follow: RFC 4533 content synchronization (OpenLDAP syncprov), or none at all.
    delta: Literal["syncrepl", "none"] = "syncrepl"
    #: Follow: first wait before reconnecting after the connection is lost; doubled per failure ...
    follow_backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    #: ... up to this cap (reset once a reconnect succeeds).
    follow_backoff_max_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _backoff_order(self) -> LdapConnectorConfig:
        if self.follow_backoff_max_s < self.follow_backoff_initial_s:
            raise ValueError("follow_backoff_max_s must not be smaller than follow_backoff_initial_s")
        if self.import_mode != "full" and self.delta == "none":
            raise ValueError(f"import_mode {self.import_mode!r} needs delta: syncrepl (delta is none)")
        return self


register_connector_config(CsvConnectorConfig)
register_connector_config(LdapConnectorConfig)

#: A validated connector config: an instance of the model registered for its kind.
ConnectorConfig = ConnectorConfigBase


# --------------------------------------------------------------------------- metaverse
class MVAttributeConfig(_Config):
    """A declared metaverse attribute. Undeclared attributes take whatever the flows give them."""

    #: A single-valued attribute refuses several values from one flow (``flow-multi-values-to-single-value``)
    #: unless the flow says how to reduce them (``multi_to_single``).
    multi_valued: bool = False
    #: ``ranked``: the connector with the lowest inbound ``precedence`` wins; ``equal``: the latest source
    #: change wins, whichever connector made it.
    precedence: Literal["ranked", "equal"] = "ranked"
    #: MIM's "enable recall": when a connector disconnects, its values are withdrawn. ``false`` keeps the
    #: value it gave until another connector's flow changes the attribute.
    recall: bool = True
    #: A reference attribute (MIM's "Reference" type: manager, member): it holds the mv_ids of other
    #: metaverse objects, never DNs. Import flows into it must be direct (``source``) flows from a
    #: connector-space attribute holding DNs of objects of the same connector; export flows from it
    #: give the referenced objects' DNs in the target (docs/rules.md#reference-attributes).
    reference: bool = False


class DeletionRuleConfig(_Config):
    """When a metaverse object is deleted (MIM's object deletion rule)."""

    rule: Literal["last-connector", "source-disconnects"] = "last-connector"
    #: For ``source-disconnects``: connectors whose disconnection deletes the metaverse object.
    sources: list[str] = Field(default_factory=list)
    #: Seconds between the disconnect that triggers the rule and the deletion; a connector that joins
    #: meanwhile (a source for ``source-disconnects``, any non-target for ``last-connector``) cancels it.
    grace_period_s: int = Field(default=0, ge=0)


class MVObjectTypeConfig(_Config):
    attributes: dict[str, MVAttributeConfig] = Field(default_factory=dict)
    deletion: DeletionRuleConfig = Field(default_factory=DeletionRuleConfig)


# --------------------------------------------------------------------------- inbound
class ConditionConfig(_Config):
    """A clause of a connector filter, projection condition or scoping filter (Entra Connect operators).

    ``lessthan``/``greaterthan`` compare numerically when both sides are numbers, otherwise as
    case-folded text (ISO-8601 timestamps in one format and zone order correctly that way);
    ``isbitset`` tests an integer attribute against a bit mask; ``ismemberof`` tests a multi-valued
    DN attribute (``memberOf``) for a group DN.
    """

    attribute: str
    operator: Literal[
        "equal",
        "notequal",
        "isnull",
        "isnotnull",
        "startswith",
        "endswith",
        "contains",
        "isin",
        "isnotin",
        "lessthan",
        "greaterthan",
        "ismemberof",
        "isbitset",
    ]
    value: str | list[str] | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _numbers_as_text(cls, v: object) -> object:
        # YAML reads `value: 2` as an int; values are compared as text (or parsed back by the operator).
        if isinstance(v, int | float) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, list):
            return [str(x) if isinstance(x, int | float) and not isinstance(x, bool) else x for x in v]
        return v

    @model_validator(mode="after")
    def _value_needed(self) -> ConditionConfig:
        if self.operator in ("isnull", "isnotnull"):
            return self
        if self.value is None:
            raise ValueError(f"operator {self.operator!r} needs a value")
        if self.operator in ("isin", "isnotin") and not isinstance(self.value, list):
            raise ValueError(f"operator {self.operator!r} needs a list value")
        if self.operator not in ("isin", "isnotin") and isinstance(self.value, list):
            raise ValueError(f"operator {self.operator!r} needs a single value")
        if self.operator == "isbitset" and bit_mask(str(self.value)) is None:
            raise ValueError("operator 'isbitset' needs a positive integer bit mask (e.g. 2 or 0x2)")
        return self


def bit_mask(text: str) -> int | None:
    """The positive integer of an ``isbitset`` value ("2", "0x2"), or None."""
    text = text.strip()
    if re.fullmatch(r"[0-9]+", text):
        mask = int(text, 10)
    elif re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        mask = int(text, 16)
    else:
        return None
    return mask if mask > 0 else None


Normalizer = Literal["lower", "trim", "nfc"]
_DEFAULT_NORMALIZE: tuple[Normalizer, ...] = ("trim", "nfc")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_HOOK_PATH = rf"^{_DOTTED}:{_DOTTED}$"
_MULTI_TO_SINGLE = r"^(first|last|join:.*)$"


class JoinCriterionConfig(_Config):
    cs: str = Field(description="Connector-space attribute")
    mv: str = Field(description="Metaverse attribute")
    normalize: list[Normalizer] = Field(default_factory=lambda: list(_DEFAULT_NORMALIZE))


class ImportFlowConfig(_Config):
    """An import attribute flow: connector-space value(s) -> one metaverse attribute.

    Exactly one kind: ``source`` (direct), ``constant``, ``template``, ``expression`` (CEL over ``cs``,
    ``cs_all`` and ``dn``), ``dn_component`` (value of the n-th RDN, negative from the end) or
    ``exists`` (``["true"]`` / ``["false"]``).
    """

    mv: str
    source: str | None = None
    constant: str | list[str] | None = None
    #: A template over CS attributes: "{first_name} {last_name}".
    template: str | None = None
    #: A CEL expression, compiled when the configuration loads.
    expression: str | None = None
    #: 1 = value of the first RDN of the object's DN, -1 = of the last one (MIM's DN component).
    dn_component: int | None = None
    #: Flows "true" when the connector-space attribute has a value, "false" otherwise.
    exists: str | None = None
    #: Only flow when the metaverse attribute has no value yet (MIM "initial flow only").
    initial_only: bool = False
    #: Flow an empty source as null (otherwise an empty source contributes nothing).
    allow_null: bool = True
    #: A null from this flow wins precedence like a value (otherwise the next contributor's value shows).
    authoritative_null: bool = False
    #: Several values into a single-valued metaverse attribute: keep the ``first``, the ``last``, or
    #: ``join:<separator>`` them. Without it that is a ``flow-multi-values-to-single-value`` error.
    multi_to_single: str | None = Field(default=None, pattern=_MULTI_TO_SINGLE)

    @model_validator(mode="after")
    def _one_source(self) -> ImportFlowConfig:
        given = [
            k
            for k in ("source", "constant", "template", "expression", "dn_component", "exists")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of source, constant, template, expression, dn_component, exists"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.dn_component == 0:
            raise ValueError("dn_component counts from 1 (first RDN) or from -1 (last RDN), not 0")
        return self


class InboundRuleConfig(_Config):
    """How one connector's objects of one type reach the metaverse: filter, join, projection, flows."""

    connector: str
    object_type: str = "person"
    mv_type: str = "person"
    #: Connector filter: objects matching ANY clause group (AND within a group) become filtered disconnectors.
    filter: list[list[ConditionConfig]] = Field(default_factory=list)
    #: One join rule (mapping group): all criteria must match. Shorthand for ``join_groups: [join]``.
    join: list[JoinCriterionConfig] = Field(default_factory=list)
    #: Ordered mapping groups: the first group that finds metaverse objects decides (one: join, several:
    #: ``ambiguous-join``); a group that finds none passes to the next; after the last, projection.
    join_groups: list[list[JoinCriterionConfig]] = Field(default_factory=list)
    #: A Python join resolver "package.module:function", called with the connector-space object and the
    #: candidates a mapping group found; returns the chosen mv_id, or None for "no match in this group".
    resolver: str | None = Field(default=None, pattern=_HOOK_PATH)
    project: bool = False
    #: Projection only for objects matching ANY clause group (AND within a group); empty = all objects.
    project_when: list[list[ConditionConfig]] = Field(default_factory=list)
    flows: list[ImportFlowConfig] = Field(default_factory=list)
    #: Rank of this connector in precedence for the attributes it flows (lower wins).
    precedence: int = Field(default=100, ge=0)

    @model_validator(mode="after")
    def _groups(self) -> InboundRuleConfig:
        if self.join and self.join_groups:
            raise ValueError("give join (one mapping group) or join_groups, not both")
        if any(not group for group in self.join_groups):
            raise ValueError("join_groups: a mapping group needs at least one criterion")
        if self.project_when and not self.project:
            raise ValueError("project_when needs project: true")
        return self

    def mapping_groups(self) -> list[list[JoinCriterionConfig]]:
        """The join rules in evaluation order."""
        return list(self.join_groups) if self.join_groups else ([list(self.join)] if self.join else [])


# --------------------------------------------------------------------------- outbound
class ExportFlowConfig(_Config):
    """An export attribute flow: metaverse value(s) -> one target attribute."""

    target: str
    source: str | None = None
    constant: str | list[str] | None = None
    template: str | None = None
    #: A CEL expression over ``mv`` (first values) and ``mv_all`` (all values), compiled at load.
    expression: str | None = None
    #: Export an empty metaverse value as a delete of the target attribute.
    allow_null: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ExportFlowConfig:
        kinds = [k for k in (self.source, self.constant, self.template, self.expression) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of source, constant, template, expression")
        return self


class DisableActionConfig(_Config):
    """Disable instead of delete: set attributes and/or move under another container."""

    set: dict[str, list[str]] = Field(default_factory=dict)
    move_to: str | None = None


class DeprovisionConfig(_Config):
    #: MIM's deprovisioning actions: delete the object; make it a disconnector (the join rules may join it
    #: again at its next change); make it an explicit disconnector (never joined again by the rules); or
    #: disable it (set attributes and/or move it).
    action: Literal["delete", "disconnect", "explicit-disconnect", "disable"] = "delete"
    disable: DisableActionConfig | None = None

    @model_validator(mode="after")
    def _disable_needs_body(self) -> DeprovisionConfig:
        if self.action == "disable" and self.disable is None:
            raise ValueError("action 'disable' needs a 'disable' block (set and/or move_to)")
        return self


class OutboundRuleConfig(_Config):
    """Provisioning into one target connector: scope, DN template, export flows, deprovisioning."""

    connector: str
    mv_type: str = "person"
    object_type: str = "person"
    #: Scoping filter: OR of AND-ed clause groups; empty = every object of mv_type.
    scope: list[list[ConditionConfig]] = Field(default_factory=list)
    #: DN template over metaverse attributes: "uid={uid},ou=people,dc=example,dc=org".
    dn: str
    flows: list[ExportFlowConfig] = Field(default_factory=list)
    #: Target attributes the object's add must carry: provisioning waits until the flows give each of them
    #: a value (an LDAP ``groupOfNames`` must have a ``member``: a group provisioned before any member
    #: exists in the target would fail its add). Meanwhile the object is not provisioned there and nothing
    #: is exported; every later change of the object plans it again.
    requires: list[str] = Field(default_factory=list)
    deprovision: DeprovisionConfig = Field(default_factory=DeprovisionConfig)

    @field_validator("dn")
    @classmethod
    def _template(cls, v: str) -> str:
        if not _TEMPLATE_FIELD.search(v):
            raise ValueError("DN template names no metaverse attribute, every object would get one DN")
        return v

    @model_validator(mode="after")
    def _required_flows(self) -> OutboundRuleConfig:
        targets = {f.target.lower() for f in self.flows}
        missing = [a for a in self.requires if a.lower() not in targets]
        if missing:
            names = ", ".join(missing)
            raise ValueError(
                f"requires {names}, which no flow of the rule exports: it would never be provisioned"
            )
        return self


# --------------------------------------------------------------------------- pipeline
#: Record-batch codecs of ``pipeline.compression`` (aiokafka's names; "none" compresses nothing).
Compression = Literal["none", "gzip", "lz4", "zstd", "snappy"]
#: ``pipeline.compression_level`` per codec that has levels: (lowest, highest, the default).
COMPRESSION_LEVELS: dict[str, tuple[int, int, int]] = {
    "zstd": (1, 22, 1),
    "lz4": (1, 12, 9),
    "gzip": (1, 9, 9),
}


class PipelineConfig(_Config):
    partitions: int = Field(default=4, ge=1, le=1024)
    #: Records a stage takes at most per batch (one multi-get, one WriteBatch, one produce per batch).
    batch_size: int = Field(default=2000, ge=1, le=100000)
    #: How long a stage waits for records when none are there (a batch never waits to fill up).
    batch_window_ms: int = Field(default=20, ge=1, le=10000)
    #: How often a stage saves its state (changelog, then local copy) and commits its input offsets; it
    #: also does when it goes idle and before giving partitions up. Writes of one key between two
    #: checkpoints are saved once. After a crash, what was processed since the last checkpoint is
    #: processed again (duplicate outputs, which every step absorbs). 0: after every batch (~20% slower,
    #: docs/benchmarks.md; less to process again after a crash).
    checkpoint_interval_ms: int = Field(default=1000, ge=0, le=600_000)
    #: A stage also saves when this many state keys wait to be saved (bounds the memory they hold).
    checkpoint_max_keys: int = Field(default=20_000, ge=1, le=10_000_000)
    #: ... or when the state waiting holds this many attribute values (a group counts one per member):
    #: unsaved state is held decoded, and a few thousand large groups changed at once (a delta round
    #: that moves people between departments) would otherwise all be held until the interval ends.
    checkpoint_max_values: int = Field(default=500_000, ge=1, le=100_000_000)
    #: While this worker is behind its input (an initial load, a replay, a backlog after an outage, or the
    #: reference table's changes still to apply at 2,000 routes or more), the
    #: reference table's answers to an object (a group hearing its members resolve one by one) are
    #: deferred: kept as one small state key each, and applied together when the worker has caught up,
    #: when a message for the object arrives, or once the oldest has waited this long. Applied as they
    #: came, a group of a few hundred members was written whole once per checkpoint for most of a load
    #: (docs/architecture.md, large multi-valued references). 0: never deferred.
    reference_defer_ms: int = Field(default=60_000, ge=0, le=3_600_000)
    #: ... only for objects seen to hold at least this many references (a group: its members) since the
    #: worker took their partition: resolved references when it synced them, or as many registered by
    #: one message (a new group's member DNs). A person hears from one manager, and deferring that
    #: answer (a key written, read back and deleted) costs more than the one sync it could merge. An
    #: object not seen so yet has its answers applied at once, and that sync tells its size. 0: every
    #: object's answers are deferred (as before the thirty-first session).
    reference_defer_from: int = Field(default=16, ge=0, le=10_000_000)
    #: From how many values staging holds a large reference attribute of a source object (a group's
    #: members) apart from the object, in 256 buckets of values under keys of their own: a member added or
    #: removed by a value-level change record then reads and writes that member's bucket, not the group,
    #: and the connector-space changelog carries the bucket, not the group (docs/architecture.md). Only
    #: attributes nothing but their reference flow reads are held so (``engine.rules.Rules.split_sources``);
    #: an attribute goes back inside its object below half of this. From as many entries, a metaverse
    #: object's large containers (an attribute's values, a link's flow and references, a target's member
    #: DNs) are stored in chunks of a quarter of this (``engine.chunks``): a checkpoint logs the chunks a
    #: change changed, not the group.
    split_values_from: int = Field(default=1_000, ge=2, le=10_000_000)
    #: Values of such large metaverse objects a worker keeps decoded (over all its partitions), for their
    #: next change: a member change to a kept group reads nothing from its chunks and saves only the chunks
    #: its change names. Kept after a checkpoint that saved a member change (the least recently used
    #: dropped first); one that the general sync of the whole object saved, or one stored when the worker
    #: took its partition, is read back from its chunks while the metaverse stage is idle, as long as it
    #: fits without dropping another. About 85 bytes each (a 50,000-member group whose export waits holds
    #: 250,000: 21 MB measured); 0 keeps none. A group holding more than this (about 200,000 members with
    #: one source and one target) is never kept: raise it for such groups.
    kept_values: int = Field(default=1_000_000, ge=0, le=1_000_000_000)
    #: From how many values a multi-valued attribute is published on ``mv.changes`` by value when the
    #: engine synced its change value by value (a member change of a large group, ``engine.membership``):
    #: a version 2 record names the values added and removed and how many there are after, instead of the
    #: whole member list again (docs/topics.md: folding the feed). Every other change, and each such
    #: object's first change after a worker took its partition (a start, a rebalance, a crash), is
    #: published whole, so a consumer that folded records a crash made the pipeline process again is set
    #: right by the next. None: every record whole (version 1), for consumers that read version 1 only.
    mv_changes_by_value_from: int | None = Field(default=1_000, ge=1)
    #: ... and at least this often (its first member change once this long has passed since its last whole
    #: record), so a consumer that starts reading ``mv.changes`` this long before now — keep the topic's
    #: retention above it — finds a whole record of every large object it then sees changed by value.
    mv_changes_whole_every_s: int = Field(default=3_600, ge=1, le=30 * 86_400)
    #: How long staging remembers a deleted object's version (its tombstone) to refuse older records of it
    #: that arrive after the delete; tombstones older than this are dropped at the connector's next
    #: full-import run end.
    tombstone_retention_s: int = Field(default=7 * 86400, ge=0)
    #: RocksDB memory of one worker process, shared by all its stores and partitions (MiB): the block
    #: cache (state blocks, and the SST files' index and filter blocks) and the memtables. Both count in
    #: the worker's RSS. A larger cache keeps more of a large state's blocks decompressed in memory.
    state_cache_mb: int = Field(default=64, ge=8, le=1_048_576)
    state_memtables_mb: int = Field(default=128, ge=8, le=1_048_576)
    #: Compression of every record batch idsync produces (outputs, changelogs, imports). Kafka
    #: deployments usually compress: the internal topics repeat DNs and attribute names, and a group's
    #: image is mostly its members' common DN suffix. zstd, the default (a 3 MB group image: 5.5 ms, 42x
    #: smaller; aiokafka's lz4 runs at level 9: 41 ms, 4.6x), also keeps the embedded broker, which holds
    #: every batch in memory, ~5x smaller (a 300k load: 1.6 GB against 7.7 uncompressed) and the load
    #: faster; "none" for a cluster whose clients cannot read zstd (Kafka < 2.1). lz4, zstd and snappy
    #: need ``cramjam`` (a dependency of idsync).
    compression: Compression = "zstd"
    #: The codec's level (Kafka's ``compression.level``): zstd 1 to 22, lz4 1 to 12, gzip 1 to 9; snappy
    #: and none have none. Unset: zstd 1 (Kafka's default, 3, costs about three times the CPU for 15%
    #: smaller batches, and compressing is the event loop's work: a large group's changelog record at
    #: each checkpoint, docs/benchmarks.md), lz4 9, gzip 9 (``COMPRESSION_LEVELS``).
    compression_level: int | None = None

    def codec_level(self) -> int | None:
        """The level ``compression`` runs at (None: a codec without levels)."""
        levels = COMPRESSION_LEVELS.get(self.compression)
        if levels is None:
            return None
        return levels[2] if self.compression_level is None else self.compression_level

    @model_validator(mode="after")
    def _level_of_the_codec(self) -> PipelineConfig:
        if self.compression_level is None:
            return self
        levels = COMPRESSION_LEVELS.get(self.compression)
        if levels is None:
            raise ValueError(
                f"compression_level: {self.compression} compression has no levels (leave it unset)"
            )
        lowest, highest, _default = levels
        if not lowest <= self.compression_level <= highest:
            raise ValueError(
                f"compression_level: {self.compression} levels are {lowest} to {highest}, "
                f"not {self.compression_level}"
            )
        return self

    @field_validator("compression")
    @classmethod
    def _codec_installed(cls, value: str) -> str:
        if value in ("lz4", "zstd", "snappy"):
            try:
                importlib.import_module("cramjam")
            except ImportError:
                raise ValueError(
                    f"{value} compression needs the cramjam package (pip install cramjam), "
                    "or use gzip or none"
                ) from None
        return value


class IdsyncConfig(_Config):
    """The whole configuration file."""

    name: str = Field(default="idsync", pattern=_NAME)
    connectors: dict[str, ConnectorConfig]
    metaverse: dict[str, MVObjectTypeConfig] = Field(default_factory=lambda: {"person": MVObjectTypeConfig()})
    inbound: list[InboundRuleConfig] = Field(default_factory=list)
    outbound: list[OutboundRuleConfig] = Field(default_factory=list)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    #: Hooks loaded at validation, by their "module:function" path (not part of the file).
    _hooks: dict[str, Callable[..., Any]] = PrivateAttr(default_factory=dict)

    @field_validator("connectors", mode="before")
    @classmethod
    def _kinds(cls, v: object) -> object:
        """Validate each connector with the model registered for its ``kind`` (errors keep their path)."""
        if not isinstance(v, dict):
            return v
        out: dict[str, object] = {}
        for name, raw in v.items():
            if not isinstance(name, str) or not re.match(_NAME, name):
                raise ValueError(f"connector name {name!r} must match {_NAME}")
            if isinstance(raw, ConnectorConfigBase):
                out[name] = raw
                continue
            kind = raw.get("kind") if isinstance(raw, dict) else None
            model = _CONNECTOR_CONFIGS.get(kind) if isinstance(kind, str) else None
            if model is None:
                # Let pydantic report it, so the error names connectors.<name>.kind and the known kinds.
                kinds: Any = Literal.__getitem__(tuple(sorted(_CONNECTOR_CONFIGS)))
                TypeAdapter(dict[str, dict[Literal["kind"], kinds]]).validate_python({name: {"kind": kind}})
            out.update(TypeAdapter(dict[str, model]).validate_python({name: raw}))  # type: ignore[valid-type]
        return out

    @model_validator(mode="after")
    def _references(self) -> IdsyncConfig:
        for i, rule in enumerate(self.inbound):
            if rule.connector not in self.connectors:
                raise ValueError(f"inbound[{i}].connector: unknown connector {rule.connector!r}")
            if rule.mv_type not in self.metaverse:
                raise ValueError(f"inbound[{i}].mv_type: unknown metaverse object type {rule.mv_type!r}")
            if not rule.mapping_groups() and not rule.project:
                raise ValueError(f"inbound[{i}]: neither join nor project, its objects could never connect")
            _compile_flow_expressions(f"inbound[{i}]", rule.flows)
            _check_reference_flows(f"inbound[{i}]", rule, self.metaverse[rule.mv_type])
            if rule.resolver is not None:
                self._hooks[rule.resolver] = _load_hook(f"inbound[{i}].resolver", rule.resolver)
        for i, out in enumerate(self.outbound):
            if out.connector not in self.connectors:
                raise ValueError(f"outbound[{i}].connector: unknown connector {out.connector!r}")
            if out.mv_type not in self.metaverse:
                raise ValueError(f"outbound[{i}].mv_type: unknown metaverse object type {out.mv_type!r}")
            _compile_flow_expressions(f"outbound[{i}]", out.flows)
        seen: set[tuple[str, str]] = set()
        for i, rule in enumerate(self.inbound):
            key = (rule.connector, rule.object_type)
            if key in seen:
                raise ValueError(f"inbound[{i}]: a second rule for {key[0]}/{key[1]}")
            seen.add(key)
        return self

    def hook(self, path: str) -> Callable[..., Any]:
        """The Python hook (a join resolver) loaded for ``path`` when the configuration was validated."""
        return self._hooks[path]

    def inbound_rule(self, connector: str, object_type: str) -> InboundRuleConfig | None:
        for rule in self.inbound:
            if rule.connector == connector and rule.object_type == object_type:
                return rule
        return None

    def outbound_rules(self, mv_type: str) -> list[OutboundRuleConfig]:
        return [r for r in self.outbound if r.mv_type == mv_type]

    def export_targets(self) -> set[str]:
        return {r.connector for r in self.outbound}


def _compile_flow_expressions(where: str, flows: Sequence[ImportFlowConfig | ExportFlowConfig]) -> None:
    """Compile every CEL expression of a rule's flows; a bad one names its field path."""
    for j, flow in enumerate(flows):
        if flow.expression is not None:
            try:
                compile_expression(flow.expression)
            except ExpressionError as exc:
                raise ValueError(f"{where}.flows[{j}].expression: {exc}") from None


def _check_reference_flows(where: str, rule: InboundRuleConfig, mv_type: MVObjectTypeConfig) -> None:
    """A flow into a reference attribute carries DNs to resolve: only a direct ``source`` flow can."""
    for j, flow in enumerate(rule.flows):
        attr = mv_type.attributes.get(flow.mv)
        if attr is None or not attr.reference:
            continue
        if flow.source is None:
            raise ValueError(
                f"{where}.flows[{j}]: {flow.mv!r} is a reference attribute; its flow must be a direct "
                "'source' flow from a connector-space attribute holding DNs"
            )
        if flow.initial_only or flow.authoritative_null:
            raise ValueError(
                f"{where}.flows[{j}]: initial_only and authoritative_null are not supported on a flow into "
                f"reference attribute {flow.mv!r}"
            )
        if flow.multi_to_single is not None:
            raise ValueError(
                f"{where}.flows[{j}]: multi_to_single is not supported on a flow into reference attribute "
                f"{flow.mv!r} (declare it multi_valued, or give one DN per object)"
            )


def _load_hook(where: str, path: str) -> Callable[..., Any]:
    """Import a "package.module:function" hook; a bad path is a configuration error naming the rule."""
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{where}: {module_name!r} has no attribute {qualname!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where}: {path!r} is not callable")
    return cast(Callable[..., Any], target)


def template_fields(template: str) -> list[str]:
    """Attribute names a ``{attr}`` template refers to."""
    return _TEMPLATE_FIELD.findall(template)
