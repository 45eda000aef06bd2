"""Export agent (one per target connector, keyed by mv_id): apply pending exports through the connector.

Exports of a partition are applied in order, one at a time, in a worker thread (connector I/O is
blocking). A transient failure (server down) is retried with capped exponential backoff and jitter and
holds the partition: nothing is skipped or dead-lettered, the backlog drains in order when the server is
back. The ledger keeps the last applied sequence per metaverse object, so a re-delivered export is
skipped; an export applied but not yet recorded (crash in between) is applied again, which every
connector's ``apply`` makes harmless (add of an existing object becomes an update, and so on).
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors.base import Export, ExportOutcome
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import ErrorRecord, ExportResult, PendingExport
from streams.output import Outputs
from streams.runtime import Runtime, now_ms

log = logging.getLogger("idsync.export")


class ExportWorker:
    """Applies ``export.<connector>`` to one connected system."""

    def __init__(self, rt: Runtime, connector_name: str, connector: Export) -> None:
        self.rt = rt
        self.name = connector_name
        self.step_id = f"export.{connector_name}"
        self.connector = connector
        self.ledger = rt.store(f"export-ledger-{connector_name}")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"export-{connector_name}")
        self.max_backoff_s = 30.0

    async def process(self, events: list[Any]) -> None:
        out = await self.rt.outputs()
        for ev in events:
            await self._one(ev, out)
            # Results go out per export so the metaverse learns anchors of new objects promptly.
            if len(out) >= 100:
                await out.flush()
            self.rt.counters.consumed[ev.message.topic] += 1
        await out.flush()
        self.rt.counters.last_activity = asyncio.get_running_loop().time()

    async def _one(self, ev: Any, out: Outputs) -> None:
        msg = ev.message
        try:
            export = PendingExport.model_validate_json(ev.value)
        except Exception as exc:
            self._error(
                out,
                "data-error",
                f"bad pending export at {msg.topic}[{msg.partition}]@{msg.offset}: {exc}",
                None,
                record=bytes(ev.value[:2000]).decode("utf-8", "replace"),
            )
            return
        part = self.ledger.partition(msg.partition)
        key = export.mv_id.encode()
        done = part.get(key)
        if done is not None and export.seq <= int(done):
            self.rt.counters.count(f"export-skipped-duplicate:{self.name}")
            return
        outcome, error = await self._apply_with_retry(export)
        part.write({key: str(export.seq).encode()})
        if error is None and outcome is not None:
            self.rt.counters.count(f"export-{export.op}:{self.name}")
            for action in outcome.actions:
                self.rt.counters.count(f"export-action-{action}:{self.name}")
            result = ExportResult(
                mv_id=export.mv_id,
                connector=self.name,
                export_id=export.export_id,
                seq=export.seq,
                status="applied",
                op=export.op,
                anchor=outcome.anchor,
                dn=outcome.dn,
                ts_ms=now_ms(),
            )
        else:
            assert error is not None
            self.rt.counters.count(f"export-failed:{self.name}")
            self._error(
                out,
                error.error_type,
                f"{export.op} {export.new_dn or export.dn}: {error.message}",
                export,
                detail=getattr(error, "trace", None),
            )
            result = ExportResult(
                mv_id=export.mv_id,
                connector=self.name,
                export_id=export.export_id,
                seq=export.seq,
                status="failed",
                op=export.op,
                error_type=error.error_type,
                message=error.message,
                ts_ms=now_ms(),
            )
        out.add(self.rt.names.mv_topic(), export.mv_id.encode(), result.model_dump_json().encode())

    async def _apply_with_retry(
        self, export: PendingExport
    ) -> tuple[ExportOutcome | None, IdsyncError | None]:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(self._pool, self.connector.apply, export), None
            except RetriableError as exc:
                wait = min(delay, self.max_backoff_s) * (0.5 + random.random() / 2)
                log.warning("%s: %s (%s), retrying in %.1fs", self.step_id, exc.message, exc.error_type, wait)
                self.rt.counters.count(f"export-retry:{self.name}")
                await asyncio.sleep(wait)
                delay *= 2
            except FatalError as exc:
                self.rt.fatal(f"{self.step_id}: {exc.error_type}: {exc.message}")
                raise
            except DataError as exc:
                return None, exc
            except Exception as exc:
                err = IdsyncError(f"{type(exc).__name__}: {exc}", error_type="extension-error")
                err.trace = traceback.format_exc()  # type: ignore[attr-defined]
                return None, err

    def _error(
        self,
        out: Outputs,
        error_type: str,
        message: str,
        export: PendingExport | None,
        record: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.rt.record_error(
            ErrorRecord(
                step_id=self.step_id,
                error_type=error_type,
                algorithm_step="export",
                connector=self.name,
                anchor=export.anchor if export else None,
                locator=(export.new_dn or export.dn) if export else None,
                mv_id=export.mv_id if export else None,
                message=message,
                detail=detail,
                record=record,
                ts_ms=now_ms(),
            ),
            out,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
