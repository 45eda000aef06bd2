"""Topic contracts: what flows between connectors and stages.

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


class ChangeRecord(_Contract):
    """One object's change, Debezium-like: ``op`` c/u/d, or r for a full-import (snapshot) read."""

    version: Literal[1] = 1
    op: Literal["c", "u", "d", "r"]
    anchor: str = Field(min_length=1)
    object_type: str
    before: Attrs | None = None
    #: Full image after the change (None for deletes).
    after: Attrs | None = None
    #: Names of changed attributes when the connector knows them; None means "compare the full image".
    changes: list[str] | None = None
    source: Source


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


class JoinRequest(_Contract):
    """A disconnector asking the join index (keyed by its join route) for a metaverse object."""

    kind: Literal["join"] = "join"
    route: str
    mv_type: str
    connector: str
    anchor: str
    dn: str | None
    cs_version: int
    event_id: str
    #: Whether this object may project a new metaverse object when nothing matches.
    project: bool
    flows: Attrs
    image: Attrs | None = None
    ts_ms: int
    #: Connector-space object type (the inbound rule, for its resolver hook).
    object_type: str | None = None
    #: Several mapping groups: the object's route per group, in order (``routes[0]`` is its home route,
    #: where its attempts are serialized); empty for one group. ``route`` is where this message goes.
    routes: list[str] = Field(default_factory=list)
    #: ``search``: evaluating the mapping group ``routes[hop]``; ``lock``: claiming the routes in sorted
    #: order before projecting, ``hop`` of them claimed so far (all claimed: project at the home route).
    phase: Literal["search", "lock"] = "search"
    hop: int = 0
    #: Attempt number given by the home route (0: fresh from staging).
    attempt: int = 0
    #: Hologram, for a resolver hook (only when the rule has one).
    cs_attributes: Attrs | None = None
    #: When the source changed the object (equal precedence).
    source_ts_ms: int = 0
    #: Metaverse reference attributes its rule flows (their values arrive as ``RefResolved``).
    references: list[str] = Field(default_factory=list)


class JoinIndexUpdate(_Contract):
    """The metaverse step telling the join index that a member left or its metaverse object is gone."""

    kind: Literal["index"] = "index"
    route: str
    #: None when a waiting disconnector withdraws (deleted before any metaverse object matched).
    mv_id: str | None = None
    connector: str | None = None
    anchor: str | None = None
    mv_deleted: bool = False
    ts_ms: int
    #: ``leave`` (the above); from the metaverse step: ``register``/``unregister`` a metaverse object whose
    #: attribute values give this route; join protocol: ``settle`` (an attempt ended, to the home route),
    #: ``wake`` (a candidate appeared for a waiting object, to its home), ``commit``/``release`` (a claim).
    op: Literal["leave", "register", "unregister", "settle", "wake", "commit", "release"] = "leave"
    attempt: int = 0
    #: settle: ``done`` (joined or failed at a hop), ``missed`` (no group matched), ``retry`` (lock lost).
    outcome: Literal["done", "missed", "retry"] | None = None
    #: register / commit: the metaverse object's attributes (a resolver hook sees them).
    attributes: Attrs | None = None


class RefUpdate(_Contract):
    """The reference index (join topic, keyed by ``route``) told who holds a key and who refers to it.

    Inbound (``ref|<connector>|<normalized DN>``, from staging): the owner is the connector-space object
    with that DN and ``value`` its mv_id (None: not joined, a placeholder); referrers are metaverse
    objects whose reference attribute names that DN. Outbound (``xref|<connector>|<mv_id>``, from the
    metaverse step): the owner is that metaverse object and ``value`` its DN in the target connector
    (None: not created there yet); referrers are metaverse objects that export a reference to it.
    """

    kind: Literal["ref"] = "ref"
    route: str
    #: ``own``/``disown``: the owner's value (disown: only if ``owner`` still owns it);
    #: ``refer``/``unrefer``: a referrer registers or leaves.
    op: Literal["own", "disown", "refer", "unrefer"]
    direction: Literal["in", "out"] = "in"
    connector: str
    #: The normalized DN (in) or the referenced mv_id (out) the route is for.
    key: str
    #: own/disown: connector-space anchor (in) or mv_id (out) of the owner.
    owner: str | None = None
    value: str | None = None
    #: own: the owner's source version when it took the key (the later taker of a DN owns it).
    version: int = 0
    #: refer/unrefer: the referring metaverse object, its attribute and its connector-space anchor.
    referrer: str | None = None
    attribute: str | None = None
    anchor: str | None = None
    ts_ms: int


JoinMessage = Annotated[JoinRequest | JoinIndexUpdate | RefUpdate, Field(discriminator="kind")]


class CSLink(_Contract):
    """The join step telling staging which metaverse object a connector-space object joined (or not)."""

    kind: Literal["link"] = "link"
    connector: str
    anchor: str
    mv_id: str | None
    #: joined / projected: now a connector; ambiguous: stays a disconnector; unlinked: its metaverse
    #: object is gone (join again); disconnected / explicitly-disconnected: deprovisioned by the
    #: ``disconnect`` / ``explicit-disconnect`` action (a disconnector / an explicit disconnector).
    outcome: Literal[
        "joined", "projected", "ambiguous", "unlinked", "disconnected", "explicitly-disconnected"
    ]
    ts_ms: int


class OperatorLink(_Contract):
    """An operator's decision on one connector-space object (``idsync join`` / ``disjoin`` / ``release``),
    published on the links topic keyed by the anchor, so staging meets it in order with the object's own
    imports and join outcomes.

    join: an explicit connector of ``mv_id`` (whatever the join rules and the connector filter say);
    disjoin: an explicit disconnector (rules never join or project it again); release: a normal
    (dis)connector again, evaluated by the rules at once.
    """

    kind: Literal["operator-link"] = "operator-link"
    version: Literal[1] = 1
    request_id: str
    connector: str
    anchor: str
    action: Literal["join", "disjoin", "release"]
    mv_id: str | None = None
    #: Who asked (the operating-system user that ran the command), for the audit trail.
    requested_by: str | None = None
    ts_ms: int

    @model_validator(mode="after")
    def _mv_id_for_join(self) -> OperatorLink:
        if (self.action == "join") != (self.mv_id is not None):
            raise ValueError("mv_id is required for join and only for join")
        return self


class DnClaim(_Contract):
    """The DN index telling a connector-space object whether it still holds its DN (links topic, keyed by
    anchor): ``transient`` when another object of the connector took the DN at a later source version."""

    kind: Literal["dn-claim"] = "dn-claim"
    connector: str
    anchor: str
    #: The normalized DN the claim is about (a stale message about a DN the object left is ignored).
    dn_key: str
    transient: bool
    ts_ms: int


LinkMessage = Annotated[CSLink | OperatorLink | DnClaim, Field(discriminator="kind")]


class MVContribution(_Contract):
    """A connector-space object's current view, routed to its metaverse object (keyed by mv_id)."""

    kind: Literal["contribute"] = "contribute"
    mv_id: str
    mv_type: str
    connector: str
    anchor: str
    dn: str | None
    cs_version: int
    event_id: str
    #: Values of the inbound attribute flows (empty list = null contributed).
    flows: Attrs
    #: Hologram, sent for connectors that are export targets (confirmation needs it).
    image: Attrs | None = None
    #: True when this contribution came through projection (the object created the MV object).
    projected: bool = False
    #: An operator's explicit join (``idsync join``): a missing metaverse object is an error, not a race.
    explicit: bool = False
    #: Join route that linked it (the metaverse step reports deletions back to that index entry).
    route: str | None = None
    #: On a projection: connectors whose waiting objects join in the same step (their contributions
    #: follow). The metaverse step must not provision into them meanwhile: they already hold the object.
    joining: list[str] = Field(default_factory=list)
    ts_ms: int
    #: Other join routes that now point at the object (a projection's claimed routes, the home route of
    #: an object with several mapping groups): the metaverse step tells them when it goes.
    routes: list[str] = Field(default_factory=list)
    #: When the source changed the object (equal precedence: the latest change wins).
    source_ts_ms: int = 0
    #: Metaverse reference attributes its rule flows (their values arrive as ``RefResolved``).
    references: list[str] = Field(default_factory=list)


class MVDisconnect(_Contract):
    """A connector-space object left its metaverse object (deleted, filtered, or disconnected)."""

    kind: Literal["disconnect"] = "disconnect"
    mv_id: str
    connector: str
    anchor: str
    reason: Literal["deleted", "filtered", "explicit"]
    cs_version: int
    event_id: str
    ts_ms: int


class ExportResult(_Contract):
    """What an export worker did with a pending export; routed back to the metaverse step."""

    kind: Literal["export-result"] = "export-result"
    mv_id: str
    connector: str
    export_id: str
    seq: int
    status: Literal["applied", "failed"]
    op: Literal["add", "update", "rename", "delete"]
    anchor: str | None = None
    dn: str | None = None
    error_type: str | None = None
    message: str | None = None
    ts_ms: int


class RefResolved(_Contract):
    """The reference index telling a referring metaverse object (``mv_id``) what a key resolves to.

    Inbound: DN ``key`` of ``connector`` is the metaverse object ``value`` (None: placeholder, no value);
    outbound: metaverse object ``key`` has DN ``value`` in target ``connector`` (None: not created yet).
    """

    kind: Literal["ref-resolved"] = "ref-resolved"
    mv_id: str
    direction: Literal["in", "out"] = "in"
    connector: str
    key: str
    value: str | None
    #: Inbound: the referring attribute and connector-space object (a stale answer for an object that
    #: left is ignored).
    attribute: str | None = None
    anchor: str | None = None
    ts_ms: int


class RefSync(_Contract):
    """The metaverse step to itself (keyed by ``mv_id``): reference answers were applied; recompute the
    object and plan its exports once for all the answers that arrived meanwhile (a group's members)."""

    kind: Literal["ref-sync"] = "ref-sync"
    mv_id: str
    ts_ms: int


MVInbound = Annotated[
    MVContribution | MVDisconnect | ExportResult | RefResolved | RefSync, Field(discriminator="kind")
]


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


class MVChange(_Contract):
    """A metaverse change: the public ``mv.changes`` feed for downstream systems (JSON Schema published)."""

    version: Literal[1] = 1
    op: Literal["create", "update", "delete"]
    mv_id: str
    object_type: str
    #: Full image after the change (empty for deletes).
    attributes: Attrs
    #: Attributes whose values changed in this event.
    changed: list[str]
    #: Connectors joined to the object after the change.
    connectors: list[str]
    #: The connector whose change caused this one.
    cause: str | None = None
    ts_ms: int


class ExportConfirmed(_Contract):
    """An export whose values the following import showed (or a divergence reported)."""

    kind: Literal["confirmed"] = "confirmed"
    connector: str
    mv_id: str
    export_id: str
    ts_ms: int
