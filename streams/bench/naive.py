"""The naive baseline for ``idsync bench``: the same engine work written the obvious faust way.

One agent consumes the import topics event by event; connector space, join and reference index and
metaverse live in RocksDB-backed faust Tables (a changelog ``send()`` per write), and so do the reference
table and its registrations; each event's internal messages (join requests, links, contributions,
reference claims, registrations and the table's answers) are handled in-process right away, and each
pending export is sent with its own ``topic.send()``. It is not used by idsync: it exists so the benchmark
can show, in the same run, what the batched stages buy over the per-event path that the issue measured at
~5k events/s.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path
from typing import Any

import faust
import msgspec

from engine.inbound import on_link, route
from engine.join import join_step
from engine.metaverse import metaverse_step
from engine.references import ref_step, register_routes, registration_keys, resolution, staging_updates
from engine.rules import compile_rules
from engine.staging import apply_dn_claim, stage, stage_absent
from schemas.codec import decode_import, pack, to_json, unpack
from schemas.messages import (
    CSLink,
    DnClaim,
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
from schemas.state import CSObject, JoinEntry, MVObject
from schemas.wire import ChangeRecord, ErrorRecord, ExportConfirmed, MVChange, PendingExport, RunMarker
from streams.config import load_config
from streams.runtime import compression_type, now_ms
from streams.topics import Names

#: Keys whose partition faust's table stores remember (``table_key_index_size``): more than a run's tables
#: hold at any size the bench runs the naive pipeline at (``--naive-max``; 100,000 people: a few million).
KEY_INDEX = 50_000_000


#: Bytes per partition per fetch for the baseline's consumer (faust's default: 1 MiB).
NAIVE_FETCH_BYTES = 64 << 10
#: A value this large (a group of some thousand members) is a "large write" in the work report.
LARGE = 64 << 10
#: The work report's file in the data directory, rewritten every ``REPORT_S`` seconds.
REPORT = "naive-work.json"
REPORT_S = 0.5


class Work:
    """What the baseline's writes cost, for the bench (``REPORT``): its speed hangs on how often it
    rewrites a large group — once per member that resolves after the group arrived — so on when the
    groups arrive among their members, which the consumer's interleaving of the import partitions
    decides. Records: per table, writes and bytes, and those of values over ``LARGE``; the HR people
    consumed before each group."""

    def __init__(self) -> None:
        self.writes: dict[str, list[int]] = {}
        self.people_before_groups: list[int] = []
        self._people = 0

    def wrote(self, table: str, size: int) -> None:
        counts = self.writes.setdefault(table, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += size
        if size >= LARGE:
            counts[2] += 1
            counts[3] += size

    def consumed(self, msg: Any) -> None:
        if isinstance(msg, ChangeRecord) and msg.source.connector == "hr":
            if msg.object_type == "group":
                self.people_before_groups.append(self._people)
            else:
                self._people += 1

    def save(self, path: Path) -> None:
        doc = {
            "writes": {
                t: dict(zip(("writes", "bytes", "large", "large_bytes"), c, strict=True))
                for t, c in self.writes.items()
            },
            "people_before_groups": self.people_before_groups,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(doc))
        tmp.replace(path)


def _load(table: Any, key: str, model: type[msgspec.Struct]) -> Any:
    raw = table.get(key)
    return None if raw is None else unpack(raw, model)


def _store(table: Any, key: str, value: msgspec.Struct | None, work: Work) -> None:
    if value is None:
        table.pop(key, None)
    else:
        raw = pack(value)
        work.wrote(table.name, len(raw))
        table[key] = raw


def build(config_path: Path, bootstrap: str, data_dir: Path) -> faust.App:
    config = load_config(config_path)
    rules = compile_rules(config)
    names = Names(config.name)
    app = faust.App(
        f"naive-{config.name}",
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=str(data_dir),
        web_enabled=False,
        topic_partitions=config.pipeline.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        producer_acks=1,
        # A large group's state is over Kafka's default 1 MB request: as the batched pipeline's producer.
        producer_max_request_size=8 << 20,
        # The batched pipeline's codec (pipeline.compression), so both cost the broker alike.
        producer_compression_type=compression_type(config.pipeline.compression),
        # Which partition's database holds each key (below): faust keeps 1,000 by default and, for a key
        # it forgot, reads the first partition that has a copy — possibly an older one.
        table_key_index_size=KEY_INDEX,
        # Small fetches, so the import partitions advance together (faust hands a fetch's records out
        # round-robin, but a 1 MiB fetch of one partition ran thousands of records ahead of the others):
        # a group then arrives after nearly all its members, which is the baseline's fastest order — it
        # rewrites a large group once per member that resolves after it (``Work``). With the default, how
        # far one partition ran ahead decided the baseline's speed fivefold from run to run.
        consumer_max_fetch_size=NAIVE_FETCH_BYTES,
    )

    # Keyed by object, route or mv_id, not by the import record being processed: faust's default table reads
    # and writes only the current event's partition, so a key written while handling an HR record would be
    # missing while handling a directory record of another partition (a join finding no candidate, a
    # reference never resolved). ``use_partitioner``: a key is read from the partition database it was last
    # written to (the store's key index, which must hold every key: ``KEY_INDEX``); copies written earlier
    # from other partitions stay behind, unread.
    def table(name: str) -> Any:
        return app.Table(
            name, partitions=config.pipeline.partitions, key_type=str, value_type=bytes, use_partitioner=True
        )

    work = Work()
    cs_table, join_table, mv_table = table("cs"), table("join"), table("mv")
    # The reference table (route -> value) and, the obvious way, each route's registrations as a list.
    ref_table, reg_table = table("refs"), table("regs")

    def lookup(route: str) -> str | None:
        raw = ref_table.get(route)
        return None if raw is None else bytes(raw).decode()

    def registrations(route: str) -> list[str]:
        raw = reg_table.get(route)
        return [] if raw is None else list(msgspec.msgpack.decode(raw))

    def table_change(value: RefValue) -> list[Any]:
        """A new value of the reference table, and its answers to the route's registrations."""
        if value.value is None:
            ref_table.pop(value.route, None)
        else:
            encoded = value.value.encode()
            work.wrote(ref_table.name, len(encoded))
            ref_table[value.route] = encoded
        return [resolution(reg, value.value, value.ts_ms) for reg in registrations(value.route)]

    def register(reg: RefRegister) -> None:
        for name, key in zip(register_routes(reg), registration_keys(reg), strict=True):
            kept = [r for r in registrations(name) if r != key] + ([key] if reg.op == "refer" else [])
            raw = pack(kept)
            work.wrote(reg_table.name, len(raw))
            reg_table[name] = raw

    imports = app.topic(
        *[names.import_topic(c) for c in config.connectors], key_serializer="raw", value_serializer="raw"
    )
    export_topic = app.topic(f"naive-{config.name}.export.dir", key_serializer="raw", value_serializer="raw")

    def stage_cs(
        key: str,
        before: CSObject | None,
        cs: CSObject | None,
        outs: list[Any],
        carried: dict[str, list[str]] | None = None,
    ) -> list[Any]:
        """Store a connector-space object; its reference-index updates join its outputs (``carried``: a
        join answer's ``ref_keys``, registered by the metaverse already, as the batched staging does)."""
        _store(cs_table, key, cs, work)
        return [*outs, *staging_updates(rules, before, cs, now_ms(), carried=carried)]

    async def handle(msg: Any) -> None:
        queue: deque[Any] = deque([msg])
        while queue:
            m = queue.popleft()
            outs: list[Any] = []
            if isinstance(m, RunMarker):
                if m.op == "run-end":
                    # A key written from several partitions is listed once per copy.
                    for key in dict.fromkeys(k for k in cs_table if k.startswith(f"{m.connector}\x00")):
                        current = _load(cs_table, key, CSObject)
                        if current is None:
                            continue
                        staged = stage_absent(current, m.run_id, m.run_version)
                        if staged is not None and not staged.skipped:
                            cs, routed = route(rules, staged, now_ms())
                            outs += stage_cs(key, current, cs, routed)
            elif isinstance(m, ChangeRecord):
                key = f"{m.source.connector}\x00{m.anchor}"
                staged = stage(_load(cs_table, key, CSObject), m)
                if not staged.skipped:
                    cs, routed = route(rules, staged, now_ms())
                    outs = stage_cs(key, staged.before, cs, routed)
            elif isinstance(m, CSLink):
                key = f"{m.connector}\x00{m.anchor}"
                cs = _load(cs_table, key, CSObject)
                if cs is not None:
                    new, linked = on_link(rules, cs, m)
                    outs = stage_cs(key, cs, new, linked, carried=m.ref_keys)
            elif isinstance(m, DnClaim):
                key = f"{m.connector}\x00{m.anchor}"
                changed = apply_dn_claim(_load(cs_table, key, CSObject), m)
                if changed is not None:
                    _store(cs_table, key, changed, work)
            elif isinstance(m, RefUpdate):
                step = ref_step(_load(join_table, m.route, JoinEntry), m)
                _store(join_table, m.route, step.entry, work)
                outs = [*step.claims, *(table_change(step.value) if step.value is not None else [])]
            elif isinstance(m, JoinRequest | JoinIndexUpdate):
                entry, outs = join_step(_load(join_table, m.route, JoinEntry), m, rules)
                _store(join_table, m.route, entry, work)
            elif isinstance(m, MVContribution | MVDisconnect | RefResolved | RefSync | RefRegister):
                mv, stepped = metaverse_step(rules, _load(mv_table, m.mv_id, MVObject), m, lookup=lookup)
                _store(mv_table, m.mv_id, mv, work)
                for o in stepped:
                    if isinstance(o, RefRegister):
                        register(o)  # the step's registrations: kept, not sent
                    elif isinstance(o, RefValue):
                        outs += table_change(o)
                    else:
                        outs.append(o)
            for o in outs:
                if isinstance(o, PendingExport):
                    await export_topic.send(key=o.mv_id.encode(), value=to_json(o))
                elif not isinstance(o, MVChange | ErrorRecord | ExportConfirmed):
                    queue.append(o)

    @app.agent(imports)
    async def naive(stream: Any) -> None:
        async for value in stream:
            msg = decode_import(value)
            work.consumed(msg)
            await handle(msg)

    @app.timer(REPORT_S)
    async def report() -> None:
        work.save(data_dir / REPORT)

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.bench.naive")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--data-dir", required=True)
    args = p.parse_args(argv)
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    app = build(Path(args.config), args.bootstrap_servers, data)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
