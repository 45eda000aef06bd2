"""What a pipeline writes to its topics, in bytes: per topic, the newest records' uncompressed size, the time
they span, and the keys that wrote the most — which objects a checkpoint keeps writing again.

    python -m streams.bench.topic_bytes --bootstrap-servers 127.0.0.1:9092 [--topics changelog.mv,mv.changes]
        [--last 5000] [--top 5] [--json OUT]

``--last N`` reads the newest N records of each partition (0: all of them); ``--topics`` takes topic names or
their endings (all topics when left out). Sizes are key + value as the consumer sees them (after
decompression): what the stages produce, not what the broker stores. It reads the topics, so a run it is
pointed at is slowed while it does (the eighteenth session used it on a 1M load's broker: the `mv` changelog
written at 42.8 MB/s, most of it department groups of ~500 members written again as members resolved).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from streams.bench.kafka import _quietly, read_all
from streams.sync import format_table


@dataclass
class TopicBytes:
    topic: str
    records: int = 0
    #: Uncompressed key + value bytes of the records read.
    bytes: int = 0
    #: Seconds between the oldest and the newest record read (their timestamps).
    span_s: float = 0.0
    #: The keys that wrote the most bytes: (key, bytes, records), largest first.
    top: list[tuple[str, int, int]] = field(default_factory=list)
    #: Per kind of key (``key_kind``: a store's key layout, ids left out), [records, of them tombstones,
    #: bytes], most records first: which of a store's kinds of state a load writes most often.
    kinds: dict[str, list[int]] = field(default_factory=dict)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.span_s if self.span_s > 0 else 0.0


def _key_text(key: bytes | None) -> str:
    return "(none)" if key is None else key.decode("utf-8", "backslashreplace")


_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_WORD = re.compile(rb"[^|\x00\x1f]*[|\x00\x1f]?")


def key_kind(key: bytes | None) -> str:
    """A key's kind: its leading control bytes and first word up to a separator (``|``, NUL or the unit
    separator), ids (UUIDs) written ``<id>`` — ``ref|``, ``hr\\x00`` (a connector-space object of
    ``hr``), ``<id>`` (a metaverse object), ``\\x00\\x01mv\\x00`` (a large object's chunk)."""
    if key is None:
        return "(none)"
    k = _ID.sub(b"<id>", key)
    i = 0
    while i < len(k) and k[i] < 0x20:
        i += 1
    word = _WORD.match(k, i)
    assert word is not None  # the pattern matches the empty string
    return k[: word.end()].decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")


async def topic_bytes(
    bootstrap: str, topics: list[str] | None = None, last: int = 0, top: int = 5, timeout_s: float = 300.0
) -> list[TopicBytes]:
    """Per topic (names or endings in ``topics``; every topic when None), the newest ``last`` records of each
    partition (0: all) measured; TimeoutError when reading takes longer than ``timeout_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        names = sorted(await consumer.topics())
    finally:
        await _quietly(consumer.stop())
    if topics is not None:
        names = [t for t in names if any(t == w or t.endswith(f".{w}") for w in topics)]
    sizes: dict[str, Counter[bytes | None]] = {t: Counter() for t in names}
    counts: dict[str, Counter[bytes | None]] = {t: Counter() for t in names}
    stamps: dict[str, list[int]] = {t: [] for t in names}
    tombstones: dict[str, Counter[bytes | None]] = {t: Counter() for t in names}
    async for topic, records in read_all(bootstrap, names, timeout_s, last=last):
        size, count, stamp, gone = sizes[topic], counts[topic], stamps[topic], tombstones[topic]
        for r in records:
            size[r.key] += len(r.key or b"") + len(r.value or b"")
            count[r.key] += 1
            if r.value is None:
                gone[r.key] += 1
            stamp.append(r.timestamp)
    result = []
    for t in names:
        stamp = stamps[t]
        result.append(
            TopicBytes(
                topic=t,
                records=sum(counts[t].values()),
                bytes=sum(sizes[t].values()),
                span_s=(max(stamp) - min(stamp)) / 1000 if stamp else 0.0,
                top=[(_key_text(k), n, counts[t][k]) for k, n in sizes[t].most_common(top)],
                kinds=_kinds(counts[t], tombstones[t], sizes[t]),
            )
        )
    return result


def _kinds(
    counts: Counter[bytes | None], tombstones: Counter[bytes | None], sizes: Counter[bytes | None]
) -> dict[str, list[int]]:
    kinds: dict[str, list[int]] = {}
    for key, n in counts.items():
        row = kinds.setdefault(key_kind(key), [0, 0, 0])
        row[0] += n
        row[1] += tombstones[key]
        row[2] += sizes[key]
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1][0], kv[0])))


def _table(rows: list[TopicBytes]) -> str:
    head = [
        "topic",
        "records",
        "MB",
        "span s",
        "MB/s",
        "largest writers (key: MB in records)",
        "kinds of key (records, tombstones)",
    ]
    return format_table(
        head,
        [
            [
                r.topic,
                f"{r.records:,}",
                f"{r.bytes / 1e6:,.1f}",
                f"{r.span_s:,.0f}",
                f"{r.bytes_per_s / 1e6:,.2f}",
                "; ".join(f"{k[:48]}: {n / 1e6:.2f} in {c}" for k, n, c in r.top[:3]),
                "; ".join(f"{kind} {n:,} ({gone:,})" for kind, (n, gone, _) in list(r.kinds.items())[:4]),
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m streams.bench.topic_bytes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--topics", help="topic names or endings, comma-separated (default: every topic)")
    p.add_argument("--last", type=int, default=0, help="newest records per partition to read (0: all)")
    p.add_argument("--top", type=int, default=5, help="keys to name per topic")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    wanted = [t for t in args.topics.split(",") if t] if args.topics else None
    rows = asyncio.run(topic_bytes(args.bootstrap_servers, wanted, args.last, args.top, args.timeout))
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
