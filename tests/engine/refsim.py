"""A small in-memory pipeline for the reference tests: staging -> join/reference index -> metaverse,
with the reference table between them, wired like the stages (streams/stages/*.py) but with message
delivery chosen by the test.

Messages are queued per (topic, key): each queue is delivered in order (as Kafka keeps a key's order),
and the test picks which queue goes next, so any interleaving across keys can be produced. The reference
table's changes are a queue per route too: delivering one updates the table (every worker's copy: there is
one here) and answers the registrations to that route at once, as the metaverse stage does; a lookup reads
the table as it is, however far behind the join stage and the metaverse steps that publish to it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from engine.inbound import on_link, on_link_gone, route, routes_by_value
from engine.join import join_step
from engine.metaverse import metaverse_step, metaverse_steps
from engine.references import (
    ref_step,
    registration_keys,
    registration_prefix,
    resolution,
    staging_updates,
)
from engine.rules import Rules, compile_rules
from engine.staging import (
    HeldAttrs,
    HeldWrites,
    apply_held,
    hydrate,
    split_object,
    stage,
    stage_by_value,
    tombstone,
)
from schemas.config import IdsyncConfig
from schemas.messages import (
    CSLink,
    ExportResult,
    JoinIndexUpdate,
    JoinRequest,
    MVContribution,
    MVDisconnect,
    RefRegister,
    RefResolved,
    RefSync,
    RefUpdate,
    RefValue,
)
from schemas.records import Attrs
from schemas.state import CSObject, JoinEntry, MVObject
from schemas.wire import ChangeRecord, ErrorRecord, MVChange, PendingExport, Source

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"


def ref_config_dict(targets: bool = False) -> dict[str, Any]:
    """An LDAP-like source ``ad`` with users (manager) and groups (member), both reference attributes;
    with ``targets``, a second directory ``ldap`` provisioned from the metaverse (DNs translated)."""
    ldap = {"kind": "ldap", "uri": "ldap://ldap.invalid", "base_dn": BASE}
    cfg: dict[str, Any] = {
        "name": "refs",
        "connectors": {"ad": {**ldap, "object_classes": {"user": "inetOrgPerson", "group": "groupOfNames"}}},
        "metaverse": {
            "person": {"attributes": {"manager": {"reference": True}}},
            "group": {"attributes": {"member": {"reference": True, "multi_valued": True}}},
        },
        "inbound": [
            {
                "connector": "ad",
                "object_type": "user",
                "mv_type": "person",
                "join": [{"cs": "employeeNumber", "mv": "employeeId"}],
                "project": True,
                "flows": [
                    {"mv": "employeeId", "source": "employeeNumber"},
                    {"mv": "uid", "source": "uid"},
                    {"mv": "manager", "source": "manager"},
                ],
            },
            {
                "connector": "ad",
                "object_type": "group",
                "mv_type": "group",
                "join": [{"cs": "cn", "mv": "name"}],
                "project": True,
                "flows": [{"mv": "name", "source": "cn"}, {"mv": "member", "source": "member"}],
            },
        ],
    }
    if targets:
        cfg["connectors"]["ldap"] = {**ldap, "uri": "ldap://target.invalid"}
        cfg["outbound"] = [
            {
                "connector": "ldap",
                "mv_type": "person",
                "object_type": "person",
                "dn": "uid={uid},ou=people,dc=target,dc=org",
                "flows": [
                    {"target": "uid", "source": "uid"},
                    {"target": "manager", "source": "manager", "allow_null": True},
                ],
            },
            {
                "connector": "ldap",
                "mv_type": "group",
                "object_type": "group",
                "dn": "cn={name},ou=groups,dc=target,dc=org",
                "flows": [
                    {"target": "cn", "source": "name"},
                    {"target": "member", "source": "member", "allow_null": True},
                ],
            },
        ]
    return cfg


def ref_rules(targets: bool = False) -> Rules:
    return compile_rules(IdsyncConfig.model_validate(ref_config_dict(targets)))


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


class _DictHeld:
    """An object's held values in the simulation (``engine.staging.HeldValues``)."""

    def __init__(self, held: HeldAttrs) -> None:
        self._held = held

    def lookup(self, attribute: str, keys: Collection[str]) -> dict[str, str]:
        mine = self._held.get(attribute, {})
        return {k: mine[k] for k in keys if k in mine}

    def values(self, attribute: str) -> dict[str, str]:
        return dict(self._held.get(attribute, {}))


class Sim:
    """The pipeline's state and queues; ``step`` delivers the head of one queue."""

    def __init__(self, rules: Rules, seed: int = 0, hold: bool = False, split: int | None = None) -> None:
        self.rules = rules
        #: With ``split``: staging holds a group's members apart from this many on, as the staging stage
        #: does from ``engine.staging.SPLIT_VALUES`` (a member change then goes ``stage_by_value``'s way).
        self.split = split
        #: The values objects hold apart, per connector-space key; how many changes went by value.
        self.held: dict[str, HeldAttrs] = {}
        self.by_value = 0
        #: Whether batches may hold a large group's answers as the metaverse stage does (the property
        #: tests); off, the delivery orders the other tests were written against stay as they were.
        self.hold = hold
        self.cs: dict[str, CSObject] = {}
        #: Tombstones of deleted objects, as staging keeps them.
        self.tombs: dict[str, CSObject] = {}
        self.join: dict[str, JoinEntry] = {}
        self.mv: dict[str, MVObject] = {}
        #: The reference table (route -> value) and the metaverse objects' registrations to it.
        self.table: dict[str, str] = {}
        self.regs: set[str] = set()
        self.queues: dict[tuple[str, str], deque[Any]] = {}
        self.rng = random.Random(seed)
        self.versions: dict[str, int] = {}
        self.exports: list[PendingExport] = []
        self.errors: list[ErrorRecord] = []
        self.changes: list[MVChange] = []
        #: Every claim the index was given (``RefUpdate``), in delivery order.
        self.claims: list[RefUpdate] = []
        self.ts = 1_000

    # ---- input
    def put(self, topic: str, key: str, msg: Any) -> None:
        self.queues.setdefault((topic, key), deque()).append(msg)

    def _import(self, anchor: str, object_type: str, event: str = "", **fields: Any) -> None:
        """A change record of ``ad`` with the object's next version."""
        version = self.versions.get(anchor, 0) + 1
        self.versions[anchor] = version
        self.ts += 1
        source = Source(
            connector="ad",
            dn=fields.pop("dn", None),
            version=version,
            event_id=f"{anchor}:{version}{event}",
            ts_ms=self.ts,
        )
        op = fields.pop("op", "u" if version > 1 else "c")
        record = ChangeRecord(op=op, anchor=anchor, object_type=object_type, source=source, **fields)
        self.put("import", anchor, record)

    def upsert(self, anchor: str, object_type: str, dn: str, attrs: Attrs) -> None:
        self._import(anchor, object_type, dn=dn, after=attrs)

    def modify(self, anchor: str, object_type: str, dn: str, added: Attrs, removed: Attrs) -> None:
        """A value-level change (change record version 2): values added to and removed from attributes."""
        self._import(
            anchor,
            object_type,
            ":v",
            op="u",
            dn=dn,
            version=2,
            changes=[],
            added=added or None,
            removed=removed or None,
        )

    def delete(self, anchor: str, object_type: str) -> None:
        self._import(anchor, object_type, ":d", op="d")

    # ---- delivery
    def pending(self) -> list[tuple[str, str]]:
        return [k for k, q in self.queues.items() if q]

    def step(self, key: tuple[str, str]) -> None:
        queue = self.queues[key]
        if key[0] == "mv" and self.rng.random() < 0.5:
            # As the metaverse stage does with a batch: several messages of one object at once.
            self._metaverse_many([queue.popleft() for _ in range(self.rng.randint(1, len(queue)))])
            return
        msg = queue.popleft()
        topic = key[0]
        if topic == "import" or topic == "links":
            self._staging(msg)
        elif topic == "join":
            self._join(msg)
        elif topic == "table":
            batch = [msg]
            if self.rng.random() < 0.5:
                # As the metaverse stage applies the table: every change read since its last turn at once.
                for other in self.pending():
                    if other[0] == "table":
                        batch.append(self.queues[other].popleft())
            self._table(batch)
        else:
            self._metaverse(msg)

    def run(self, shuffle: bool = True, limit: int = 200_000) -> None:
        for _ in range(limit):
            keys = self.pending()
            if not keys:
                return
            self.step(self.rng.choice(keys) if shuffle else sorted(keys)[0])
        raise AssertionError("the simulated pipeline did not settle")

    # ---- staging's held values (streams/stages/staging.py)
    def whole(self, key: str) -> CSObject | None:
        """A connector-space object with the values it holds apart."""
        cs = self.cs.get(key)
        return None if cs is None else hydrate(cs, self.held.get(key, {}))

    def wholes(self) -> list[CSObject]:
        """Every connector-space object, whole."""
        return [hydrate(cs, self.held.get(key, {})) for key, cs in self.cs.items()]

    def _keep(self, key: str, cs: CSObject | None, before: HeldAttrs) -> None:
        """Store a whole object (None: gone) as staging does: its large attributes held apart."""
        if self.split is not None and cs is not None:
            cs, writes = split_object(
                cs, before, self.rules.splittable(cs.connector, cs.object_type), self.split
            )
            self._write(key, writes)
        elif before:
            self._write(key, {attr: dict.fromkeys(values) for attr, values in before.items()})
        if cs is None:
            self.cs.pop(key, None)
        else:
            self.cs[key] = cs

    def _write(self, key: str, writes: HeldWrites) -> None:
        held = apply_held(self.held.get(key, {}), writes)
        if held:
            self.held[key] = held
        else:
            self.held.pop(key, None)

    # ---- stages (as streams/stages/*.py wire them)
    def _staging(self, msg: Any) -> None:
        if isinstance(msg, CSLink):
            key = f"{msg.connector}|{msg.anchor}"
            cs = self.whole(key)
            if cs is None:
                self._emit(on_link_gone(msg, self.tombs.get(key)))
                return
            new, outputs = on_link(self.rules, cs, msg)
            refs = staging_updates(self.rules, cs, new, msg.ts_ms, carried=msg.ref_keys)
            self._keep(key, new, self.held.get(key, {}))
            self._emit([*outputs, *refs])
            return
        key = f"{msg.source.connector}|{msg.anchor}"
        dn_valued = self.rules.ref_sources(msg.source.connector, msg.object_type)
        current = self.cs.get(key)
        if current is not None and current.split:
            fast = stage_by_value(current, msg, dn_valued, _DictHeld(self.held.get(key, {})), self.split)
            if fast is not None and routes_by_value(self.rules, fast[0]):
                by_value, writes = fast
                if by_value.skipped:
                    return
                cs, outputs = route(self.rules, by_value, msg.source.ts_ms)
                assert cs is not None
                refs = staging_updates(
                    self.rules, by_value.before, cs, msg.source.ts_ms, values=by_value.values
                )
                self._write(key, writes)
                self.cs[key] = cs
                self.by_value += 1
                self._emit([*outputs, *refs])
                return
        before = self.held.get(key, {})
        staged = stage(self.whole(key), msg, dn_valued=dn_valued)
        if staged.skipped:
            return
        cs, outputs = route(self.rules, staged, msg.source.ts_ms)
        refs = staging_updates(self.rules, staged.before, cs, msg.source.ts_ms, values=staged.values)
        if cs is None:
            gone = self.whole(key)
            self._keep(key, None, before)
            # Staging keeps a tombstone of a deleted object (streams/stages/staging.py).
            unseen = CSObject(connector=msg.source.connector, anchor=msg.anchor, object_type=msg.object_type)
            self.tombs[key] = tombstone(
                gone or unseen,
                msg.source.version,
                msg.source.event_id,
                msg.source.ts_ms,
            )
        else:
            self._keep(key, cs, before)
            self.tombs.pop(key, None)
        self._emit([*outputs, *refs])

    def _join(self, msg: JoinRequest | JoinIndexUpdate | RefUpdate) -> None:
        if isinstance(msg, RefUpdate):
            self.claims.append(msg)
            step = ref_step(self.join.get(msg.route), msg)
            self._store(msg.route, step.entry)
            self._emit([step.value] if step.value is not None else [])
            return
        entry, outputs = join_step(self.join.get(msg.route), msg, self.rules)
        self._store(msg.route, entry)
        self._emit(outputs)

    def _table(self, msgs: list[RefValue]) -> None:
        """Changes of the reference table reach the copy and, at once, the registrations to their routes
        (the metaverse stage applies what it read to its partitions between two batches, one step per
        registered object for all of them)."""
        for msg in msgs:
            if msg.value is None:
                self.table.pop(msg.route, None)
            else:
                self.table[msg.route] = msg.value
        answers: dict[str, list[RefResolved]] = {}
        for changed in dict.fromkeys(m.route for m in msgs):
            prefix = registration_prefix(changed)
            for reg in sorted(k for k in self.regs if k.startswith(prefix)):
                answer = resolution(reg, self.table.get(changed), msgs[-1].ts_ms)
                answers.setdefault(answer.mv_id, []).append(answer)
        for batch in answers.values():
            self._metaverse_many(list(batch))

    def _metaverse(self, msg: Any) -> None:
        mv, outputs = metaverse_step(self.rules, self.mv.get(msg.mv_id), msg, lookup=self.table.get)
        if mv is None:
            self.mv.pop(msg.mv_id, None)
        else:
            self.mv[msg.mv_id] = mv
        self._emit(outputs, metaverse=True)

    def _metaverse_many(self, msgs: list[Any]) -> None:
        mv_id = msgs[0].mv_id
        # As the stage does it: pending answers synced at once (no RefSync sent), or held (a large
        # group: the stage delivers the RefSync itself at its next checkpoint, here queued now and
        # delivered whenever the test says); or as one message at a time does it (a RefSync sent).
        settle: bool | Callable[[MVObject], bool] = self.rng.random() < 0.5
        if self.hold and not settle and self.rng.random() < 0.5:
            settle = lambda _mv: False  # noqa: E731
        mv, outputs = metaverse_steps(
            self.rules, self.mv.get(mv_id), msgs, settle=settle, lookup=self.table.get
        )
        if mv is None:
            self.mv.pop(mv_id, None)
        else:
            self.mv[mv_id] = mv
        for each in outputs:
            self._emit(each, metaverse=True)
        if callable(settle) and mv is not None and mv.ref_sync is not None:
            self.put("mv", mv_id, RefSync(mv_id=mv_id, ts_ms=msgs[-1].ts_ms))

    def _store(self, key: str, entry: JoinEntry | None) -> None:
        if entry is None:
            self.join.pop(key, None)
        else:
            self.join[key] = entry

    def _emit(self, outputs: list[Any], metaverse: bool = False) -> None:
        for o in outputs:
            if isinstance(o, RefRegister) and metaverse:
                # A metaverse step's registrations stay in its partition (the stage keeps them as keys).
                for key in registration_keys(o):
                    if o.op == "refer":
                        self.regs.add(key)
                    else:
                        self.regs.discard(key)
            elif isinstance(o, JoinRequest | JoinIndexUpdate | RefUpdate):
                self.put("join", o.route, o)
            elif isinstance(o, RefValue):
                self.put("table", o.route, o)
            elif isinstance(
                o, MVContribution | MVDisconnect | RefResolved | RefSync | ExportResult | RefRegister
            ):
                self.put("mv", o.mv_id, o)
            elif isinstance(o, CSLink):
                self.put("links", o.anchor, o)
            elif isinstance(o, PendingExport):
                self.exports.append(o)
            elif isinstance(o, ErrorRecord):
                self.errors.append(o)
            elif isinstance(o, MVChange):
                self.changes.append(o)

    # ---- reading the result
    def mv_of(self, anchor: str) -> MVObject:
        cs = self.cs[f"ad|{anchor}"]
        assert cs.mv_id is not None, f"{anchor} is not joined"
        return self.mv[cs.mv_id]

    def live(self) -> list[MVObject]:
        return [m for m in self.mv.values() if not m.deleted]

    def referrer_keys(self) -> list[str]:
        """The metaverse objects' registrations (route, referrer, attribute, anchor)."""
        return sorted(self.regs)


__all__ = ["Sim", "group_dn", "ref_config_dict", "ref_rules", "user_dn"]
