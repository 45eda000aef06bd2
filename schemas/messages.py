"""Internal messages between the stages (``sync.join``, ``sync.links``, ``sync.mv``): msgspec structs.

These are not public contracts (docs/topics.md: no compatibility promise) and they are the hot path:
every change record causes several of them, so they are msgspec structs, encoded as MessagePack
(``schemas.codec``), not pydantic models — building and dumping a pydantic model costs more than the
whole sync step of an identity. The public contracts stay pydantic models in ``schemas.records``.

Each topic's messages form a tagged union on ``kind``; decoding validates every field's type.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct
from msgspec.structs import force_setattr

from schemas.records import Attrs


class _Message(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    pass


# --------------------------------------------------------------------------- sync.join (key: route)
class JoinRequest(_Message, frozen=True, kw_only=True, tag_field="kind", tag="join"):
    """A disconnector asking the join index (keyed by its join route) for a metaverse object."""

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
    routes: list[str] = []
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
    references: list[str] = []
    #: The normalized DNs its reference flows name, per metaverse reference attribute, when they are few
    #: (``engine.references.CARRIED_KEYS`` at most; None: not carried). The metaverse registers them as
    #: the join's contribution arrives, so the new object's first sync already holds the references the
    #: reference table resolves; staging then registers only what changed since (docs/rules.md).
    ref_keys: dict[str, list[str]] | None = None


class JoinIndexUpdate(_Message, frozen=True, kw_only=True, tag_field="kind", tag="index"):
    """The metaverse step telling the join index that a member left or its metaverse object is gone."""

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


class RefUpdate(_Message, frozen=True, kw_only=True, tag_field="kind", tag="ref"):
    """A connector-space object claims or leaves a DN in the reference index (join topic, keyed by
    ``route`` = ``ref|<connector>|<normalized DN>``, from staging).

    The index arbitrates between claimants (the later taker of a DN owns it) and publishes what the DN
    resolves to — the owner's mv_id, None while it is not joined (a placeholder) — to the reference table
    (``RefValue``). Referrers do not register here: they keep their registrations beside themselves, in the
    metaverse stage (``RefRegister``).
    """

    route: str
    #: ``own``: the owner's value; ``disown``: it leaves the DN (only if ``owner`` still claims it).
    op: Literal["own", "disown"]
    connector: str
    #: The normalized DN the route is for.
    key: str
    #: The connector-space anchor of the claimant.
    owner: str
    value: str | None = None
    #: own: the owner's source version when it took the key (the later taker of a DN owns it).
    version: int = 0
    ts_ms: int


JoinMessage = JoinRequest | JoinIndexUpdate | RefUpdate


# --------------------------------------------------------------------------- sync.links (key: anchor)
class CSLink(_Message, frozen=True, kw_only=True, tag_field="kind", tag="link"):
    """The join step telling staging which metaverse object a connector-space object joined (or not)."""

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
    #: joined / projected: the ``ref_keys`` its contribution carried (what the metaverse registered for
    #: it): staging registers the difference to the object's current references.
    ref_keys: dict[str, list[str]] | None = None
    #: joined / projected: the connector-space version of the object the join answered (its request's).
    #: After a crash staging may meet the answer before the record that caused it is staged again; where
    #: the object's tombstone is older than this version, the answer is for a later life of the object
    #: (deleted and created again) whose record is still to come — not one deleted while its join was
    #: in flight (``engine.inbound.on_link_gone``). None: unknown (a link written by an earlier release).
    cs_version: int | None = None


class OperatorLink(_Message, frozen=True, kw_only=True, tag_field="kind", tag="operator-link"):
    """An operator's decision on one connector-space object (``idsync join`` / ``disjoin`` / ``release``),
    published on the links topic keyed by the anchor, so staging meets it in order with the object's own
    imports and join outcomes.

    join: an explicit connector of ``mv_id`` (whatever the join rules and the connector filter say);
    disjoin: an explicit disconnector (rules never join or project it again); release: a normal
    (dis)connector again, evaluated by the rules at once.
    """

    version: Literal[1] = 1
    request_id: str
    connector: str
    anchor: str
    action: Literal["join", "disjoin", "release"]
    mv_id: str | None = None
    #: Who asked (the operating-system user that ran the command), for the audit trail.
    requested_by: str | None = None
    ts_ms: int

    def __post_init__(self) -> None:
        # Runs on decoding too: a malformed operator record is refused like any malformed record.
        if (self.action == "join") != (self.mv_id is not None):
            raise ValueError("mv_id is required for join and only for join")


class DnClaim(_Message, frozen=True, kw_only=True, tag_field="kind", tag="dn-claim"):
    """The DN index telling a connector-space object whether it still holds its DN (links topic, keyed by
    anchor): ``transient`` when another object of the connector took the DN at a later source version."""

    connector: str
    anchor: str
    #: The normalized DN the claim is about (a stale message about a DN the object left is ignored).
    dn_key: str
    transient: bool
    ts_ms: int


LinkMessage = CSLink | OperatorLink | DnClaim


# --------------------------------------------------------------------------- sync.mv (key: mv_id)
class MVContribution(_Message, frozen=True, kw_only=True, tag_field="kind", tag="contribute"):
    """A connector-space object's current view, routed to its metaverse object (keyed by mv_id)."""

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
    joining: list[str] = []
    ts_ms: int
    #: Other join routes that now point at the object (a projection's claimed routes, the home route of
    #: an object with several mapping groups): the metaverse step tells them when it goes.
    routes: list[str] = []
    #: When the source changed the object (equal precedence: the latest change wins).
    source_ts_ms: int = 0
    #: Metaverse reference attributes its rule flows (their values arrive as ``RefResolved``).
    references: list[str] = []
    #: From a join (the join stage): the request's ``ref_keys``, registered before the object is synced.
    ref_keys: dict[str, list[str]] | None = None


class MVDisconnect(_Message, frozen=True, kw_only=True, tag_field="kind", tag="disconnect"):
    """A connector-space object left its metaverse object (deleted, filtered, or disconnected)."""

    mv_id: str
    connector: str
    anchor: str
    reason: Literal["deleted", "filtered", "explicit"]
    cs_version: int
    event_id: str
    ts_ms: int


class ExportResult(_Message, frozen=True, kw_only=True, tag_field="kind", tag="export-result"):
    """What an export worker did with a pending export; routed back to the metaverse step."""

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


class RefResolved(_Message, frozen=True, kw_only=True, tag_field="kind", tag="ref-resolved"):
    """What a key of the reference table resolves to, for a metaverse object (``mv_id``) registered to it.
    Built inside the metaverse stage from its local copy of the table (when the object registers, when the
    table changes the key), never sent on a topic.

    Inbound: DN ``key`` of ``connector`` is the metaverse object ``value`` (None: placeholder, no value);
    outbound: metaverse object ``key`` has DN ``value`` in target ``connector`` (None: not created yet).
    """

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


class RefSync(_Message, frozen=True, kw_only=True, tag_field="kind", tag="ref-sync"):
    """The metaverse step to itself (keyed by ``mv_id``): reference answers were applied; recompute the
    object and plan its exports once for all the answers that arrived meanwhile (a group's members)."""

    mv_id: str
    ts_ms: int


class RefRegister(_Message, frozen=True, kw_only=True, tag_field="kind", tag="ref-register"):
    """A metaverse object (``mv_id``) starts or stops referring to keys of the reference table.

    Inbound (from staging, on ``sync.mv``): the object's connector ``connector`` names DNs ``keys`` in
    ``attribute`` (connector-space object ``anchor``). Outbound (produced and applied inside the metaverse
    stage, never sent): the object exports references to metaverse objects ``keys`` in target
    ``connector``. One message carries what one change did to one attribute (at most
    ``engine.references.REGISTER_KEYS`` keys: a new group's members come in a few messages, not one per
    member). The metaverse stage keeps each key's registration as a key in its partition
    (``engine.references``), looks it up in its local copy of the reference table, and hears again whenever
    the table changes it.
    """

    mv_id: str
    op: Literal["refer", "unrefer"]
    direction: Literal["in", "out"] = "in"
    connector: str
    keys: list[str] = []
    attribute: str | None = None
    anchor: str | None = None
    ts_ms: int
    #: The one key of a message written before registrations were batched (a worker upgraded while such
    #: messages are still on ``sync.mv`` reads them): moved into ``keys`` when decoded.
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is not None:
            force_setattr(self, "keys", [*self.keys, self.key])
            force_setattr(self, "key", None)


MVInbound = MVContribution | MVDisconnect | ExportResult | RefResolved | RefSync | RefRegister


# --------------------------------------------------------------------------- sync.refs (key: route)
class RefValue(_Message, frozen=True, kw_only=True, tag_field="kind", tag="ref-value"):
    """One entry of the reference table (compacted, keyed by ``route``; every worker reads it whole).

    ``ref|<connector>|<normalized DN>``: the mv_id the DN resolves to, as the join stage arbitrates it
    (None: nobody holds the DN, or its holder is not joined). ``xref|<connector>|<mv_id>``: that metaverse
    object's DN in target ``connector``, as its metaverse step publishes it (None: not created there).
    """

    route: str
    value: str | None = None
    ts_ms: int
