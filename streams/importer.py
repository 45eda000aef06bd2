"""Runs a connector's full import and publishes it as a bracketed run on ``import.<connector>``."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from connectors.base import DeletedObject, FullImport, ImportedObject, ImportFailure
from schemas.records import ChangeRecord, RunMarker, Source
from schemas.wire import ErrorRecord
from streams.output import Outputs
from streams.runtime import Runtime, now_ms


@dataclass
class ImportReport:
    connector: str
    run_id: str
    objects: int = 0
    failures: int = 0
    seconds: float = 0.0


def change_record(
    name: str,
    op: Literal["r", "u", "d"],
    item: ImportedObject | DeletedObject,
    version: int,
    event_id: str,
    run_id: str | None = None,
    watermark: str = "",
    read_ts_ms: int | None = None,
) -> bytes:
    """A connector object as the change record staging reads on ``import.<name>`` (deletes carry no image).

    ``read_ts_ms``: when the connector began reading it (default: now), the record's ``source.ts_ms`` —
    export confirmation trusts an image only for exports applied before it was read."""
    rec = ChangeRecord(
        op=op,
        anchor=item.anchor,
        object_type=item.object_type,
        after=item.attributes if isinstance(item, ImportedObject) else None,
        source=Source(
            connector=name,
            dn=item.dn,
            version=version,
            event_id=event_id,
            run_id=run_id,
            ts_ms=now_ms() if read_ts_ms is None else read_ts_ms,
            locator=item.locator,
            watermark=watermark,
        ),
    )
    return rec.model_dump_json().encode()


def record_import_error(
    rt: Runtime,
    out: Outputs,
    name: str,
    algorithm_step: str,
    error_type: str,
    locator: str,
    message: str,
    raw: str | None = None,
) -> None:
    """A per-object import error of connector ``name`` (an object it could not read, or apply)."""
    rt.record_error(
        ErrorRecord(
            step_id=f"import.{name}",
            error_type=error_type,
            algorithm_step=algorithm_step,
            connector=name,
            locator=locator,
            message=f"{locator}: {message}",
            record=raw,
            ts_ms=now_ms(),
        ),
        out,
    )


async def full_import(rt: Runtime, name: str, connector: FullImport, chunk: int = 1000) -> ImportReport:
    """Read everything in a worker thread, publish in chunks between run-start and run-end markers.

    Every partition gets both markers, so the staging step of each partition knows which of its objects
    the run did not see (deletes are inferred only from a complete full import).
    """
    loop = asyncio.get_running_loop()
    run_id = uuid.uuid4().hex
    # Records of a later run carry a higher version; within a run every record has the same one.
    version = time.time_ns()
    report = ImportReport(name, run_id)
    started = time.monotonic()
    topic = rt.names.import_topic(name)
    out = await rt.outputs()

    def marker(op: str, p: int, count: int | None = None) -> bytes:
        m = RunMarker(
            op=op,
            run_id=run_id,
            connector=name,
            partition=p,
            run_version=version,  # type: ignore[arg-type]
            ts_ms=now_ms(),
            count=count,
        )
        return m.model_dump_json().encode()

    for p in range(rt.partitions):
        out.add(topic, b"__run__", marker("run-start", p), partition=p)
    await out.flush()
    items = iter(connector.full_import())
    while True:
        # Every object of the chunk was read after this (export confirmation compares it with exports).
        reading = now_ms()
        batch = await loop.run_in_executor(None, lambda: list(itertools.islice(items, chunk)))
        if not batch:
            break
        for item in batch:
            if isinstance(item, ImportedObject):
                report.objects += 1
                value = change_record(
                    name, "r", item, version, f"{run_id}:{item.anchor}", run_id=run_id, read_ts_ms=reading
                )
                out.add(topic, item.anchor.encode(), value)
            elif isinstance(item, ImportFailure):
                report.failures += 1
                record_import_error(
                    rt, out, name, "import", item.error_type, item.locator, item.message, item.raw
                )
        await out.flush()
    for p in range(rt.partitions):
        out.add(topic, b"__run__", marker("run-end", p, report.objects), partition=p)
    await out.flush()
    rt.counters.count(f"imported:{name}", report.objects)
    report.seconds = time.monotonic() - started
    return report
