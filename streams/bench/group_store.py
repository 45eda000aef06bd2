"""One member change of a large group through the metaverse step and its store, without a broker.

``python -m streams.bench.group_store [--members 50000] [--changes 16] [--whole]`` builds a group as the
metaverse holds it after an initial load — members resolved from a source's DNs, exported to a target
whose confirming import has not come yet (its ledger holds the members) — stores it in a RocksDB partition
with the metaverse store's codec, then adds one member at a time the way the stage does: read the object
(``Batch.get``), apply a reference answer and sync it (``engine.metaverse.metaverse_steps``), keep it
unsaved, and save it as a checkpoint does (``encode_unsaved``, one WriteBatch). It prints the median CPU ms
of the read, the sync and the save, and the bytes the save writes (what the changelog would carry).
``--whole`` stores the object as one value (the codec off: as before the twenty-fourth session);
``--general`` syncs it by the general sync (``engine.membership`` off: as before the twenty-fifth);
``--copy`` copies the group's reference maps for each step instead of sharing them (``engine.shared``:
as before the twenty-eighth); ``--no-warm`` leaves out what the idle stage does after each save (a group
not kept read back whole, ``streams.chunks.MVChunks.warm``: as before the twenty-ninth).

What it leaves out: the broker (producing the changelog and the outputs), staging, the reference
registrations' store. Not a test: nothing here asserts a speed. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from engine import metaverse
from engine.chunks import Touched
from engine.metaverse import metaverse_steps
from engine.rules import compile_rules
from engine.shared import SharedMaps
from engine.values import dn_key
from schemas.config import IdsyncConfig
from schemas.messages import RefResolved, RefSync
from schemas.state import ConnectorLink, LedgerEntry, MVObject, TargetState
from streams.chunks import KEPT_VALUES, KeptObjects, MVChunks
from streams.runtime import GC_THRESHOLDS
from streams.stages.base import Batch
from streams.store import PartitionStore

SOURCE, TARGET = "hr", "dir"
PEOPLE, TARGET_PEOPLE = "ou=people,o=hr", "ou=people,dc=dir"


def group_config(dn_template: str = "cn={name},ou=groups,dc=dir") -> dict[str, Any]:
    """The configuration: a source's groups (members are references) exported to a directory's groups,
    their members value by value (``dn_template``: the target group's DN)."""
    ldap = {"kind": "ldap", "uri": "ldap://source.invalid", "base_dn": "o=hr"}
    return {
        "name": "group-store",
        "connectors": {
            SOURCE: {**ldap, "object_classes": {"user": "inetOrgPerson", "group": "groupOfNames"}},
            TARGET: {**ldap, "uri": "ldap://target.invalid", "base_dn": "dc=dir"},
        },
        "metaverse": {
            "person": {"attributes": {}},
            "group": {"attributes": {"member": {"reference": True, "multi_valued": True}}},
        },
        "inbound": [
            {
                "connector": SOURCE,
                "object_type": "group",
                "mv_type": "group",
                "join": [{"cs": "cn", "mv": "name"}],
                "project": True,
                "flows": [{"mv": "name", "source": "cn"}, {"mv": "member", "source": "member"}],
            }
        ],
        "outbound": [
            {
                "connector": TARGET,
                "mv_type": "group",
                "object_type": "group",
                "dn": dn_template,
                "flows": [
                    {"target": "cn", "source": "name"},
                    {"target": "member", "source": "member", "allow_null": True},
                ],
            }
        ],
    }


def _rules() -> Any:
    return compile_rules(IdsyncConfig.model_validate(group_config()))


def _mv_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"person-{i}"))


def group(members: int) -> MVObject:
    """A group of ``members`` as the metaverse holds it after an initial load."""
    refs = {dn_key(f"uid=u{i},{PEOPLE}"): _mv_id(i) for i in range(members)}
    ids = sorted(refs.values())
    dns = {m: f"uid=u{i},{TARGET_PEOPLE}" for i, m in enumerate(_mv_id(i) for i in range(members))}
    return MVObject(
        mv_id="group-all-staff",
        object_type="group",
        attributes={"member": ids, "name": ["all-staff"]},
        contributors={"member": SOURCE, "name": SOURCE},
        links={
            SOURCE: ConnectorLink(
                anchor="all-staff", flows={"member": ids, "name": ["all-staff"]}, refs={"member": refs}
            )
        },
        targets={
            TARGET: TargetState(
                status="exists",
                anchor="cn=all-staff,ou=groups,dc=dir",
                dn="cn=all-staff,ou=groups,dc=dir",
                seq=1,
                ref_dns=dns,
                ledger={"member": LedgerEntry(values=sorted(dns.values()), dn_valued=True, seq=1)},
            )
        },
        published_connectors=[SOURCE, TARGET],
    )


def run(
    members: int,
    changes: int,
    whole: bool,
    general: bool = False,
    keep: bool = True,
    share: bool = True,
    warm: bool = True,
) -> dict[str, float]:
    """Median CPU ms of the read, sync and save of ``changes`` member changes, of the idle stage's warming
    after each save, and bytes saved per change. ``general``: ``engine.membership.member_sync`` declines
    every sync (in this process, for the run); ``share``: the steps share the group's large maps
    (``engine.shared``) as the stage's do; ``warm``: after each save the store does what the idle stage
    does (``streams.chunks.MVChunks.warm``: a group not kept is read back whole)."""
    real = metaverse.member_sync
    if general:
        metaverse.member_sync = lambda *_args: None  # type: ignore[assignment]  # the general sync only
    try:
        return _run(members, changes, whole, keep, share, warm)
    finally:
        metaverse.member_sync = real


def _run(members: int, changes: int, whole: bool, keep: bool, share: bool, warm: bool) -> dict[str, float]:
    rules = _rules()
    with tempfile.TemporaryDirectory() as tmp:
        codec = MVChunks(1_000, kept=KeptObjects(KEPT_VALUES if keep else 0))
        part = PartitionStore(Path(tmp) / "p0", 0, None, None if whole else codec)
        key = b"group-all-staff"

        def save() -> int:
            puts = part.encode_unsaved()
            part.write(puts, None)
            part.saved()
            return sum(len(k) + len(v or b"") for k, v in puts.items())

        def idle() -> None:
            while warm and not whole and codec.warm(part):
                pass

        batch = Batch(part, [key], MVObject)
        batch.get(key)
        batch.put(key, group(members))
        batch.stash()
        save()
        idle()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

        def lookup(route: str) -> str | None:
            """The reference table: every person is in the target (its DN there)."""
            if route.startswith("xref|"):
                return f"uid={route.rsplit('|', 1)[-1]},{TARGET_PEOPLE}"
            return None

        reads, syncs, saves, warms, written = [], [], [], [], []
        for n in range(changes):
            i = members + n
            t0 = time.process_time()
            batch = Batch(part, [key], MVObject)
            mv = batch.get(key)
            t1 = time.process_time()
            answer = RefResolved(
                mv_id=mv.mv_id,
                direction="in",
                connector=SOURCE,
                attribute="member",
                anchor="all-staff",
                key=dn_key(f"uid=u{i},{PEOPLE}"),
                value=_mv_id(i),
                ts_ms=n,
            )
            touched = Touched()
            # As the stage: each call shares the group's large maps (engine.shared), unless copying.
            first, second = (SharedMaps(), SharedMaps()) if share else (None, None)
            mv, _ = metaverse_steps(
                rules, mv, [answer], settle=True, lookup=lookup, touched=touched, shared=first
            )
            sync = RefSync(mv_id="group-all-staff", ts_ms=n)
            mv, _ = metaverse_steps(
                rules, mv, [sync], settle=True, lookup=lookup, touched=touched, shared=second
            )
            batch.update(key, mv, touched, changed=any(s is not None and s.changed for s in (first, second)))
            batch.stash()
            t2 = time.process_time()
            written.append(save())
            t3 = time.process_time()
            idle()
            t4 = time.process_time()
            reads.append(t1 - t0)
            syncs.append(t2 - t1)
            saves.append(t3 - t2)
            warms.append(t4 - t3)
    skip = min(2, changes - 1)  # the first changes warm up

    def ms(xs: list[float]) -> float:
        return round(1e3 * statistics.median(xs[skip:]), 1)

    return {
        "read_ms": ms(reads),
        "sync_ms": ms(syncs),
        "save_ms": ms(saves),
        "warm_ms": ms(warms),
        "total_ms": ms([a + b + c for a, b, c in zip(reads, syncs, saves, strict=True)]),
        "save_bytes": statistics.median(written[skip:]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one member change of a large group through the metaverse store")
    p.add_argument("--members", type=int, default=50_000)
    p.add_argument("--changes", type=int, default=16)
    p.add_argument("--whole", action="store_true", help="store the object as one value (no chunks)")
    p.add_argument("--general", action="store_true", help="sync by the general sync (no member sync)")
    p.add_argument(
        "--no-keep", action="store_true", help="read the group from its chunks after each checkpoint"
    )
    p.add_argument("--copy", action="store_true", help="copy the group's maps for each step (no sharing)")
    p.add_argument(
        "--no-warm", action="store_true", help="no idle stage between changes (no group read back whole)"
    )
    args = p.parse_args(argv)
    r = run(
        args.members,
        args.changes,
        args.whole,
        args.general,
        not args.no_keep,
        not args.copy,
        not args.no_warm,
    )
    how = (
        ("whole" if args.whole else "chunks")
        + (", general sync" if args.general else "")
        + (", not kept" if args.no_keep and not args.whole else "")
        + (", maps copied" if args.copy else "")
        + (", not warmed" if args.no_warm and not args.whole else "")
    )
    print(
        f"{how} @{args.members:,} members: read {r['read_ms']} ms, sync "
        f"{r['sync_ms']} ms, save {r['save_ms']} ms (CPU, median of {args.changes}; idle after it: "
        f"warm {r['warm_ms']} ms); "
        f"{r['save_bytes'] / 1e3:,.1f} KB written per change"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
