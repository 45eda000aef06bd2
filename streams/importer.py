"""Runs a connector's full import and publishes it as a bracketed run on ``import.<connector>``."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass

from connectors.base import FullImport, ImportedObject, ImportFailure
from schemas.records import ChangeRecord, ErrorRecord, RunMarker, Source
from streams.runtime import Runtime, now_ms


@dataclass
class ImportReport:
    connector: str
    run_id: str
    objects: int = 0
    failures: int = 0
    seconds: float = 0.0


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
        batch = await loop.run_in_executor(None, lambda: list(itertools.islice(items, chunk)))
        if not batch:
            break
        for item in batch:
            if isinstance(item, ImportedObject):
                report.objects += 1
                rec = ChangeRecord(
                    op="r",
                    anchor=item.anchor,
                    object_type=item.object_type,
                    after=item.attributes,
                    source=Source(
                        connector=name,
                        dn=item.dn,
                        version=version,
                        event_id=f"{run_id}:{item.anchor}",
                        run_id=run_id,
                        ts_ms=now_ms(),
                        locator=item.locator,
                    ),
                )
                out.add(topic, item.anchor.encode(), rec.model_dump_json().encode())
            elif isinstance(item, ImportFailure):
                report.failures += 1
                rt.record_error(
                    ErrorRecord(
                        step_id=f"import.{name}",
                        error_type=item.error_type,
                        algorithm_step="import",
                        connector=name,
                        locator=item.locator,
                        message=f"{item.locator}: {item.message}",
                        record=item.raw,
                        ts_ms=now_ms(),
                    ),
                    out,
                )
        await out.flush()
    for p in range(rt.partitions):
        out.add(topic, b"__run__", marker("run-end", p, report.objects), partition=p)
    await out.flush()
    rt.counters.count(f"imported:{name}", report.objects)
    report.seconds = time.monotonic() - started
    return report
