"""What a new worker would take over: the pipeline's state stores rebuilt from their changelogs into an
empty directory (streams.consumer.restore), for tests that check the state of a running pipeline."""

from __future__ import annotations

from pathlib import Path

from schemas.codec import unpack
from schemas.config import IdsyncConfig
from schemas.state import CSObject, MVObject
from streams.consumer import restore
from streams.runtime import Runtime, Settings


async def restored(
    bootstrap: str, config: IdsyncConfig, scratch: Path
) -> tuple[list[CSObject], list[MVObject]]:
    """Every connector-space record (tombstones of deleted objects included) and every metaverse object."""
    reader = Runtime(Settings(bootstrap_servers=bootstrap, data_dir=scratch, fetch_max_wait_ms=10), config)
    try:
        parts = list(range(reader.partitions))
        cs_store, mv_store = reader.store("cs"), reader.store("mv")
        await restore(reader, cs_store, parts)
        await restore(reader, mv_store, parts)
        cs = [unpack(v, CSObject) for _p, _k, v in cs_store.scan_all()]
        mv = [unpack(v, MVObject) for _p, _k, v in mv_store.scan_all()]
    finally:
        await reader.stop()
    return cs, mv
