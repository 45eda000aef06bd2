"""What a new worker would take over: the pipeline's state stores rebuilt from their changelogs into an
empty directory (streams.consumer.restore), for tests that check the state of a running pipeline."""

from __future__ import annotations

from pathlib import Path

from engine.staging import HeldAttrs, held_prefix, hydrate
from schemas.codec import unpack
from schemas.config import IdsyncConfig
from schemas.state import CSObject, HeldBucket, MVObject
from streams.consumer import restore
from streams.runtime import Runtime, Settings
from streams.stages.base import Batch
from streams.store import APART

#: Where staging keeps held values (``engine.staging.held_prefix``): beside the connector space.
HELD = b"\x02"


async def restored(
    bootstrap: str, config: IdsyncConfig, scratch: Path, apart: dict[str, int] | None = None
) -> tuple[list[CSObject], list[MVObject]]:
    """Every connector-space record (tombstones of deleted objects included) and every metaverse object,
    whole. ``apart``: filled with how many keys each store holds apart from its objects (staging's held
    buckets, ``cs``; the metaverse's chunks, ``mv``)."""
    reader = Runtime(Settings(bootstrap_servers=bootstrap, data_dir=scratch, fetch_max_wait_ms=10), config)
    try:
        parts = list(range(reader.partitions))
        cs_store, mv_store = reader.store("cs"), reader.store("mv")
        await restore(reader, cs_store, parts)
        await restore(reader, mv_store, parts)
        cs = _whole_cs([(k, v) for _p, k, v in cs_store.scan_all()])
        # Read whole: a large group's containers are held in chunks (engine.chunks).
        mv = [o for p in parts for _k, o in Batch(mv_store.partition(p), [], MVObject).scan(b"")]
        if apart is not None:
            apart["cs"] = sum(1 for _p, k, _v in cs_store.scan_all() if k.startswith(HELD))
            apart["mv"] = sum(1 for _p, _k, _v in mv_store.scan_all(APART))
    finally:
        await reader.stop()
    return cs, mv


def _whole_cs(records: list[tuple[bytes, bytes]]) -> list[CSObject]:
    """The connector-space records, a large group's held values put back (engine.staging.hydrate)."""
    buckets = [(k, unpack(v, HeldBucket)) for k, v in records if k.startswith(HELD)]
    objects = []
    for k, v in records:
        if k.startswith(HELD):
            continue
        cs = unpack(v, CSObject)
        if cs.split:
            held: HeldAttrs = {}
            for attr in cs.split:
                prefix = held_prefix(cs.connector, cs.anchor, attr)
                values = held[attr] = {}
                for key, bucket in buckets:
                    if key.startswith(prefix):
                        values.update(bucket.values)
            cs = hydrate(cs, held)
        objects.append(cs)
    return objects
