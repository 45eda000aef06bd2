"""State: connector-space objects (staging tables), metaverse objects (metaverse table), join index.

State lives in RocksDB and its changelog topics, encoded as MessagePack (``schemas.codec``): msgspec
structs, not pydantic models, because every change record reads and writes several of them (decoding,
copying and dumping pydantic models cost more than the sync step itself). Not a public contract: the
public view of the metaverse is ``mv.changes`` (``schemas.records.MVChange``).

Engine steps never mutate the state they are given: they copy what they change (``copy.copy`` of a
struct is shallow and cheap; containers are copied where they are mutated). One exception, asked for by
the caller: ``engine.shared`` lets the metaverse steps change a large group's reference maps in place,
with a journal that is undone if they raise (the caller then replaces the object it gave).
"""

from __future__ import annotations

from enum import StrEnum

from msgspec import Struct

from schemas.messages import JoinRequest
from schemas.records import Attrs


class ConnectorState(StrEnum):
    """The MIM connector state of a connector-space object."""

    DISCONNECTOR = "disconnector"
    CONNECTOR = "connector"
    FILTERED_DISCONNECTOR = "filtered-disconnector"
    EXPLICIT_CONNECTOR = "explicit-connector"
    EXPLICIT_DISCONNECTOR = "explicit-disconnector"


class _State(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    pass


class CSObject(_State, kw_only=True):
    """A connector-space object: the hologram of a connected-system object, keyed by its anchor."""

    connector: str
    anchor: str
    object_type: str
    dn: str | None = None
    attributes: Attrs = {}
    version: int = 0
    event_id: str = ""
    #: Id of the last full-import run that saw this object (delete inference at run end).
    last_run: str | None = None
    state: ConnectorState = ConnectorState.DISCONNECTOR
    mv_id: str | None = None
    #: The join-index key this object was routed by while its join was pending (keeps one route).
    join_route: str | None = None
    #: With several mapping groups: every route it was routed by, in group order (``join_route`` first).
    join_routes: list[str] = []
    locator: str | None = None
    #: When the source changed it (``source.ts_ms`` of the last change record): equal precedence.
    source_ts_ms: int = 0
    #: MIM's transient object: another object of this connector took its DN at a later source version —
    #: its own delete or rename has not arrived yet. It no longer answers for the DN (references resolve to
    #: the other); cleared when it moves to another DN, or when the other leaves the DN first.
    transient: bool = False
    #: Large multi-valued reference attributes held apart from the object, in buckets of values under
    #: keys of their own (a group's members, once there are ``pipeline.split_values_from`` of them):
    #: attribute -> how many values it holds. They are not in ``attributes``; ``engine.staging.hydrate``
    #: puts them back for the steps that read them all.
    split: dict[str, int] = {}
    #: Set on a tombstone only (kept under ``engine.staging.tombstone_key``): when staging recorded the
    #: delete. A tombstone remembers a deleted object's version so that an older record arriving later
    #: (re-delivered or out of order) cannot bring the object back.
    deleted_ts_ms: int | None = None


class HeldBucket(_State, kw_only=True):
    """Some of the values of a connector-space object's held attribute (``CSObject.split``), kept under
    ``engine.staging.held_bucket_key``: the values whose normalized form (their DN key) hashes to this
    bucket, normalized form -> the value as the connector gave it."""

    values: dict[str, str] = {}


class CSHead(Struct, kw_only=True):
    """What a full-import run end needs of a connector-space object (the rest of it is not decoded)."""

    version: int = 0
    last_run: str | None = None


class ConnectorLink(_State, kw_only=True):
    """A connector-space object joined to a metaverse object, as the metaverse step sees it."""

    anchor: str
    dn: str | None = None
    cs_version: int = 0
    #: Values this connector contributes through inbound flows.
    flows: Attrs = {}
    #: Last imported image, for export targets (confirmation compares with it).
    image: Attrs | None = None
    #: Join route it came through; its index entry is told when it leaves.
    route: str | None = None
    ts_ms: int = 0
    #: Per flowed attribute: source time of the change that last changed its value (equal precedence).
    changed_ts: dict[str, int] = {}
    #: Reference attributes: normalized DN -> mv_id of the object it resolved to (placeholders, DNs not
    #: resolved yet, are absent). The attribute's flow value is the set of these mv_ids.
    refs: dict[str, dict[str, str]] = {}
    #: Reference attributes whose ``refs`` changed since their flow value was last computed from them
    #: (the next ``RefSync`` does it once for all the answers that arrived meanwhile).
    stale_refs: list[str] = []
    #: Per stale reference attribute, the keys whose answers changed since its flow value was computed
    #: -> the value each had then ("" for none): the next sync changes the flow value by these alone
    #: (``engine.membership``). A stale attribute without an entry (too many answers) is computed whole.
    stale_keys: dict[str, dict[str, str]] = {}


class LedgerEntry(_State, kw_only=True):
    """An exported value waiting for the confirming import."""

    #: ``replace``: the attribute's whole value set; ``delta``: value-level, ``values`` added and
    #: ``removed`` removed (a multi-valued attribute such as a group's members: never rewritten whole).
    op: str = "replace"
    values: list[str]
    removed: list[str] = []
    #: Values are DNs (reference attributes): compared as DNs (case, spaces around separators).
    dn_valued: bool = False
    #: The export that carried it: its sequence number for this object and target
    #: (``engine.export.export_id`` names it).
    seq: int
    applied: bool = False
    applied_ts_ms: int | None = None


class TargetState(_State, kw_only=True):
    """Outbound state of one metaverse object towards one target connector."""

    #: none | joining | pending-add | exists | pending-delete | disconnected
    status: str = "none"
    anchor: str | None = None
    #: DN the target holds (from the last import or applied export).
    dn: str | None = None
    #: DN the last emitted export gives it (rename in flight until confirmed).
    pending_dn: str | None = None
    #: Sequence of the last export emitted for this object to this target.
    seq: int = 0
    #: Exported values awaiting the confirming import, per attribute ("__dn__" and "__deleted__" too).
    ledger: dict[str, LedgerEntry] = {}
    disabled: bool = False
    #: Last export error, cleared by the next successful export.
    error: str | None = None
    #: A failed export dropped its values from the ledger: the next evaluation of the object plans this
    #: target again, whatever changed (so the values are exported again).
    replan: bool = False
    #: Referenced metaverse objects this object exports references to, -> their DN in this target
    #: ("" while they do not exist there yet: the reference waits for a second pass).
    ref_dns: dict[str, str] = {}
    #: The mark (``Rules.rule_marks``) of the outbound rule whose last plan left this target holding what
    #: the rule wants, every reference resolved and no flow failing: until something else changes what
    #: the target holds or what the rule wants, a change of some members is planned from those members
    #: alone (``engine.membership``). None: the next plan is made whole. Values held back from removal
    #: while references wait (``engine.provisioning.Desired.adds_only``) count as held.
    settled_by: str | None = None
    #: With ``settled_by``: the reference attributes whose references were waiting at that plan (values
    #: without a DN in this target) -> how many.
    waiting: dict[str, int] = {}
    #: With ``settled_by``: value-level target attributes holding values held back from removal while
    #: references wait -> those values' keys (DN keys for DNs), in order (at most
    #: ``engine.export.HELD_BACK_KEYS``: a target holding more is not settled).
    held_back: dict[str, list[str]] = {}


class RetainedValue(_State, kw_only=True):
    """A value a disconnected connector gave to an attribute without recall."""

    connector: str
    values: list[str]


class MVObject(_State, kw_only=True):
    """A metaverse object: the merged identity, keyed by a stable mv_id."""

    mv_id: str
    object_type: str
    attributes: Attrs = {}
    #: attribute -> connector whose value won precedence
    contributors: dict[str, str] = {}
    links: dict[str, ConnectorLink] = {}
    targets: dict[str, TargetState] = {}
    #: Join routes that point at this object in the join index.
    routes: list[str] = []
    #: The route it was projected on (the join index owns its mv_id there).
    projected_route: str | None = None
    #: Routes its attribute values give for the mapping groups of the inbound rules, registered in the
    #: join index so that objects of other connectors find it by them.
    join_keys: list[str] = []
    #: Values of connectors that disconnected from attributes without recall, kept until a flow changes them.
    retained: dict[str, RetainedValue] = {}
    #: Deletion rule with a grace period: when the deletion falls due (None: not marked).
    delete_due_ms: int | None = None
    deleted: bool = False
    version: int = 0
    #: The connector list of the last mv.changes record published for it: a join or disconnection that
    #: changes no value still publishes, so downstream never holds a stale ``connectors`` list.
    published_connectors: list[str] = []
    #: Reference answers applied but not synced yet: the connector that caused the first of them (a
    #: ``RefSync`` to this object is on its way and syncs them all at once).
    ref_sync: str | None = None
    #: Large containers held apart in chunks under keys of their own (``engine.chunks``: a group's members,
    #: their references, their DNs in a target): container path -> how many entries it holds. Set in the
    #: stored form only; ``engine.chunks.hydrate`` puts the containers back for the engine.
    chunked: dict[str, int] = {}


class MVChunk(_State, kw_only=True):
    """A run of a large container of a metaverse object (``MVObject.chunked``), in order: a list's values,
    or a dict's items whose keys fall in the chunk's range."""

    values: list[str] = []
    items: dict[str, str] = {}


class JoinTicket(_State, kw_only=True):
    """At an object's home route (its first mapping group's route): its join attempt in flight.

    One attempt at a time per object: a newer request arriving meanwhile is kept and run after it.
    """

    attempt: int
    active: bool = True
    request: JoinRequest
    #: A newer request or a wake-up arrived during the attempt: run again when it settles.
    rerun: bool = False
    #: The metaverse object the last attempt joined (a late request re-contributes there).
    linked: str | None = None


class JoinEntry(_State, kw_only=True):
    """One join-index entry (keyed by route = metaverse type + normalized join value)."""

    mv_id: str | None = None
    #: Bumped when the metaverse object is deleted, so a new projection gets a new mv_id.
    generation: int = 0
    #: "connector|anchor" of the connector-space objects joined through this entry.
    members: list[str] = []
    #: Disconnectors that may not project, waiting for a metaverse object with this value (invariant 3):
    #: "connector|anchor" -> their latest join request, replayed when a metaverse object appears.
    waiting: dict[str, JoinRequest] = {}
    #: Metaverse objects whose attribute values give this route (registered by the metaverse step, or by
    #: a projection that claimed it), with the attributes they had then (for a resolver hook).
    registered: dict[str, Attrs] = {}
    #: "connector|anchor" of an object about to project that holds this route (invariant 2).
    claim: str | None = None
    #: Projection attempts waiting for the claim to go.
    parked: list[JoinRequest] = []
    #: At a home route: join attempts of objects with several mapping groups.
    tickets: dict[str, JoinTicket] = {}
    #: Reference index entry (``ref|...`` routes): who owns the DN and what it resolves to, published to
    #: the reference table when it changes (its referrers register in the metaverse stage, not here).
    ref_owner: str | None = None
    ref_value: str | None = None
    #: Every object that claims the key, owner -> [the source version at which it took the key, its
    #: value]. Two connector-space objects claim one DN when a delete or rename of the older one has not
    #: arrived yet (MIM's transient object): the later taker owns the DN; the other is only remembered
    #: until its disown, so that whichever order the two arrive in, the DN resolves to the live one.
    ref_claims: dict[str, tuple[int, str | None]] = {}


class Registration(_State, kw_only=True):
    """A metaverse object's registration to a key of the reference table (``engine.references``): the key
    says it all (route, referrer, attribute, anchor), the value is empty."""


class DeferredAnswer(_State, kw_only=True):
    """A reference table answer to a registration, deferred while the worker is behind its input
    (``streams.stages.metaverse``): kept under the referrer's key until it is applied. The key names the
    registration; this is what the table said and when."""

    value: str | None = None
    ts_ms: int = 0


class TablePositions(_State, kw_only=True):
    """Where the reference table stood (next offset per partition of ``sync.refs``) when a metaverse
    partition was last saved: every table change before it had reached that partition's registrations.
    A worker that takes the partition over replays the table's changes since (``streams.reftable``)."""

    offsets: dict[int, int] = {}


def values_held(state: object) -> int:
    """How many attribute values a state object holds, plus one for the object: the weight of its
    decoded copy (a 50,000-member group weighs about 50,000 times a person's attribute). Stages bound
    the state they hold unsaved by it (``pipeline.checkpoint_max_values``). Every key a batch writes is
    weighed: the loops stay in C (``map(len, ...)``) where they can."""
    if isinstance(state, CSObject):
        return 1 + sum(map(len, state.attributes.values()))
    if isinstance(state, MVObject):
        n = 1 + sum(map(len, state.attributes.values()))
        for link in state.links.values():
            n += sum(map(len, link.flows.values())) + sum(map(len, link.refs.values()))
            if link.image:
                n += sum(map(len, link.image.values()))
        for target in state.targets.values():
            n += len(target.ref_dns)
            for entry in target.ledger.values():
                n += len(entry.values) + len(entry.removed)
        return n
    if isinstance(state, HeldBucket):
        return 1 + len(state.values)
    return 1
