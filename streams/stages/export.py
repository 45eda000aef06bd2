"""Export agent (one per target connector, keyed by mv_id): apply pending exports through the connector.

Exports are applied in order per partition, in worker threads (connector I/O is blocking): one at a
time through ``Export.apply``, or a micro-batch at once through ``BatchExport.apply_batch`` when the
connector offers it. With ``export_connections: N`` (connectors.<name>) the worker holds N instances of
the connector, each with its own thread and connection — a *lane* — and partition p's exports go to lane
p mod N: the lanes apply at once, and one object's exports (keyed by mv_id, so in one partition) stay in
order on one lane. That is the ordering several workers give anyway (one per partition), so it adds no
interleaving a multi-worker deployment does not already have. A transient failure (server down) is
retried with capped exponential backoff and jitter, never shorter than the server's ``retry_after_s``,
and holds the batch: nothing is skipped or dead-lettered, the backlog drains in order when the server is
back.

Recording order (crash safety): apply, then produce the ``ExportResult``s and wait for the broker, then
write the ledger (last applied sequence per metaverse object) — and only then does faust ack the
offsets. A crash before the ledger write re-applies the export after restart, which every connector's
``apply`` makes harmless (an add of an existing object becomes an update, a delete of a missing one is
done); a crash after it skips the re-delivered export. Either way the metaverse gets the result.

Deletion threshold (docs/export.md, ``engine.threshold``): a delete past the partition's budget is held
in the ledger store under ``HELD_PREFIX`` (it survives a restart) and other changes go on; an
``ApproveDeletes`` record on the partition releases exactly the deletes held before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import traceback
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.base import BatchExport, Export, ExportOutcome
from engine.threshold import DeleteWindow, approved, decide, needs_base, superseded
from schemas.codec import pack
from schemas.errors import FatalError, IdsyncError, RetriableError
from schemas.messages import ExportResult
from schemas.records import APPROVE_DELETES_KEY, ApproveDeletes, PendingExport
from schemas.wire import ErrorRecord
from streams.output import Outputs
from streams.runtime import Runtime, now_ms
from streams.stages.base import flush
from streams.stages.staging import connector_space_size

log = logging.getLogger("idsync.export")

#: Ledger keys of held deletes: ``HELD_PREFIX + mv_id`` -> the PendingExport. Ledger sequence keys are bare
#: mv_ids, which never start with a NUL byte.
HELD_PREFIX = b"\x00held\x00"
#: Ledger key of the partition's deletion-threshold window (engine.threshold.DeleteWindow as JSON).
WINDOW_KEY = b"\x00threshold-window"
#: Crash-safety tests only: ``after-apply:N`` / ``after-flush:N`` kills this process (SIGKILL) after the
#: N-th applied export, before its result is produced / before the ledger records it.
KILL_POINT_ENV = "IDSYNC_TEST_EXPORT_KILL_POINT"


def _in_turn(events: list[Any]) -> list[Any]:
    """Events with the partitions taken in turn (one of each, then the next of each...), each partition's
    in order: Kafka orders records within a partition only, and the lanes go by partition."""
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for ev in events:
        by_partition[ev.message.partition].append(ev)
    if len(by_partition) < 2:
        return events
    return [ev for turn in zip_longest(*by_partition.values()) for ev in turn if ev is not None]


def export_consumer_group(rt: Runtime, connector: str) -> str:
    """The consumer group whose committed offsets say what the export worker of ``connector`` has done.

    The one place that knows it (``idsync pending-exports`` reads it): the export stage's own group
    (``streams.app`` names the stage ``export-<connector>``).
    """
    return rt.names.group_id(f"export-{connector}")


async def committed_export_offsets(rt: Runtime, connector: str) -> dict[int, int | None]:
    """Committed offset per partition of ``export.<connector>`` (None: the group never committed one)."""
    topic = rt.names.export_topic(connector)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=rt.settings.bootstrap_servers,
        group_id=export_consumer_group(rt, connector),
        enable_auto_commit=False,
        client_id=f"idsync-{rt.config.name}-pending",
    )
    await consumer.start()
    try:
        # Fetching committed offsets does not join the group: the running workers are not disturbed.
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(rt.partitions)}
    finally:
        await consumer.stop()


def _encode_window(w: DeleteWindow) -> bytes:
    return json.dumps(asdict(w)).encode()


def _decode_window(raw: bytes | None) -> DeleteWindow:
    return DeleteWindow(**json.loads(raw)) if raw else DeleteWindow()


@dataclass
class _Work:
    """Exports to apply (in order) and ledger writes, per partition, made only after results are out."""

    todo: list[tuple[int, PendingExport]] = field(default_factory=list)
    puts: dict[int, dict[bytes, bytes | None]] = field(default_factory=lambda: defaultdict(dict))
    windows: dict[int, DeleteWindow] = field(default_factory=dict)


@dataclass
class _Lane:
    """One connector instance and the thread that runs its blocking calls, in order."""

    connector: Export
    pool: ThreadPoolExecutor


class ExportWorker:
    """Applies ``export.<connector>`` to one connected system.

    ``more``: further instances of the connector (``export_connections`` - 1 of them), each a lane of its
    own; this worker closes them (the first one belongs to the pipeline)."""

    def __init__(
        self, rt: Runtime, connector_name: str, connector: Export, more: Sequence[Export] = ()
    ) -> None:
        self.rt = rt
        self.name = connector_name
        self.step_id = f"export.{connector_name}"
        self.ledger = rt.store(f"export-ledger-{connector_name}")
        self.threshold = rt.config.connectors[connector_name].deletion_threshold
        self._lanes = [
            _Lane(c, ThreadPoolExecutor(1, thread_name_prefix=f"export-{connector_name}-{i}"))
            for i, c in enumerate([connector, *more])
        ]
        self.max_backoff_s = 30.0
        #: Exports per connector call for ``apply_batch`` (and per ledger write).
        self.batch_max = 200
        self._applied = 0
        self._kill_point = os.environ.get(KILL_POINT_ENV, "")

    @property
    def lanes(self) -> int:
        """How many connector instances apply exports at once."""
        return len(self._lanes)

    def _lane(self, partition: int) -> int:
        """The lane that applies a partition's exports (all of them, in order)."""
        return partition % len(self._lanes)

    # ------------------------------------------------------------------ batch
    async def process(self, events: list[Any]) -> None:
        """Apply a batch: the partitions' exports taken in turn, so that each run gives every lane its
        share at once (the consumer takes up to ``batch_max`` from each partition, ``batch_max`` per lane
        in all: ``StageConsumer.per_partition``); a run ends when one lane has ``batch_max`` exports to
        apply."""
        out = await self.rt.outputs()
        work = _Work()
        lanes = self.lanes
        shares = [0] * lanes
        for ev in _in_turn(events):
            msg = ev.message
            if msg.key == APPROVE_DELETES_KEY:
                # Everything before the approval is settled first: it releases what is held *now*.
                await self._run(work, out)
                work, shares = _Work(), [0] * lanes
                await self._approve(ev, out)
                continue
            export = self._decode(ev, out)
            if export is None:
                continue
            before = len(work.todo)
            self._admit(export, msg.partition, work, out)
            lane = self._lane(msg.partition)
            shares[lane] += len(work.todo) - before
            if shares[lane] >= self.batch_max:
                await self._run(work, out)
                work, shares = _Work(), [0] * lanes
        await self._run(work, out)
        for ev in events:
            self.rt.counters.consumed[ev.message.topic] += 1
        self.rt.counters.last_activity = asyncio.get_running_loop().time()

    def _decode(self, ev: Any, out: Outputs) -> PendingExport | None:
        try:
            return PendingExport.model_validate_json(ev.value)
        except Exception as exc:
            msg = ev.message
            self._error(
                out,
                "data-error",
                f"bad pending export at {msg.topic}[{msg.partition}]@{msg.offset}: {exc}",
                None,
                record=bytes(ev.value[:2000]).decode("utf-8", "replace"),
            )
            return None

    def _window(self, p: int, work: _Work) -> DeleteWindow:
        if p not in work.windows:
            work.windows[p] = _decode_window(self.ledger.partition(p).get(WINDOW_KEY))
        return work.windows[p]

    def _set_window(self, p: int, work: _Work, window: DeleteWindow) -> None:
        work.windows[p] = window
        work.puts[p][WINDOW_KEY] = _encode_window(window)

    def _stored(self, p: int, work: _Work, key: bytes) -> bytes | None:
        puts = work.puts.get(p, {})
        if key in puts:
            return puts[key]
        return self.ledger.partition(p).get(key)

    def _admit(self, export: PendingExport, p: int, work: _Work, out: Outputs) -> None:
        """Skip a re-delivered export, drop a held delete it overtakes, hold a delete past the threshold."""
        key = export.mv_id.encode()
        done = self._stored(p, work, key)
        if done is not None and export.seq <= int(done):
            self.rt.counters.count(f"export-skipped-duplicate:{self.name}")
            return
        work.puts[p][key] = str(export.seq).encode()
        held_key = HELD_PREFIX + key
        if self._stored(p, work, held_key) is not None:
            # A later change of the same object (re-provisioned, back in scope) makes the held delete moot.
            work.puts[p][held_key] = None
            self._set_window(p, work, superseded(self._window(p, work)))
            self.rt.counters.count(f"export-delete-superseded:{self.name}")
        if export.op == "delete":
            now = now_ms()
            window = self._window(p, work)
            base = self._target_size() if needs_base(window, self.threshold, now) else None
            decision = decide(window, self.threshold, self.rt.partitions, now, base)
            self._set_window(p, work, decision.window)
            if decision.hold:
                work.puts[p][held_key] = export.model_dump_json().encode()
                self.rt.counters.count(f"export-delete-held:{self.name}")
                if decision.tripped:
                    self._tripped(export, p, decision.budget, out)
                return
        work.todo.append((p, export))

    def _target_size(self) -> int:
        """The target's connector-space size (percentage threshold), as far as this process holds it."""
        return connector_space_size(self.rt.store("cs"), self.name)

    def _tripped(self, export: PendingExport, p: int, budget: int | None, out: Outputs) -> None:
        t = self.threshold
        limit = [f"{t.count} deletes"] if t.count is not None else []
        limit += [f"{t.percent:g}% of the connector space"] if t.percent is not None else []
        self.rt.counters.count(f"stopped-deletion-threshold-exceeded:{self.name}")
        self._error(
            out,
            "stopped-deletion-threshold-exceeded",
            f"partition {p} of {self.rt.partitions}: more than its share ({budget}) of the deletion "
            f"threshold "
            f"({' and '.join(limit)} per {t.window_s}s) in one window; this and later deletes are held, "
            f"other changes go on; release them with: idsync approve-deletes {self.name}",
            export,
        )

    async def _approve(self, ev: Any, out: Outputs) -> None:
        msg = ev.message
        try:
            approval = ApproveDeletes.model_validate_json(ev.value)
            if approval.connector != self.name:
                raise ValueError(f"approval for connector {approval.connector!r} on {msg.topic}")
        except Exception as exc:
            self._error(
                out,
                "data-error",
                f"bad deletion approval at {msg.topic}[{msg.partition}]@{msg.offset}: {exc}",
                None,
                record=bytes(ev.value[:2000]).decode("utf-8", "replace"),
            )
            await flush(out, self.step_id)
            return
        p = msg.partition
        held = [
            (k, PendingExport.model_validate_json(v)) for k, v in self.ledger.partition(p).scan(HELD_PREFIX)
        ]
        held.sort(key=lambda item: (item[1].ts_ms, item[1].seq))
        work = _Work()
        for k, export in held:
            work.todo.append((p, export))
            work.puts[p][k] = None
        self._set_window(p, work, approved(self._window(p, work)))
        self.rt.counters.count(f"export-deletes-approved:{self.name}", len(held))
        log.warning(
            "%s: approval %s by %s releases %d held deletes of partition %d",
            self.step_id,
            approval.approval_id,
            approval.approved_by or "?",
            len(held),
            p,
        )
        await self._run(work, out)

    # ------------------------------------------------------------------ apply and record
    async def _run(self, work: _Work, out: Outputs) -> None:
        """Apply ``work.todo``, produce the results and wait for the broker, then write the ledger."""
        if work.todo:
            results = await self._apply_all(work.todo)
            for (_p, export), result in zip(work.todo, results, strict=True):
                self._result(export, result, out)
        # Results first, acknowledged, then the ledger: a ledger entry never records an export whose
        # result was not published (streams.stages.base.Stage.commit explains the order).
        await flush(out, self.step_id)
        for p, puts in work.puts.items():
            # The ledger (held deletes included) moves with its partition through the store's changelog.
            changelog = getattr(self.ledger.partition(p), "changelog", None)
            if changelog is not None:
                for k, v in puts.items():
                    out.add(changelog, k, v, partition=p)
        offsets = await flush(out, self.step_id)
        if work.todo:
            self._maybe_kill("after-flush")
        for p, puts in work.puts.items():
            part = self.ledger.partition(p)
            changelog = getattr(part, "changelog", None)
            if changelog is None:
                part.write(puts)
            else:
                part.write(puts, offsets.get((changelog, p)))

    def _maybe_kill(self, point: str) -> None:
        """The crash-safety tests' kill point (``KILL_POINT_ENV``); inert unless that variable is set."""
        name, _, count = self._kill_point.partition(":")
        if name == point and self._applied >= int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    async def _apply_all(self, todo: list[tuple[int, PendingExport]]) -> list[ExportOutcome | IdsyncError]:
        """Apply ``(partition, export)`` pairs: each lane its partitions' exports in order, the lanes at
        once. Results come back in the order given. An error that stops the worker (FatalError) is raised
        once every lane has finished what it had started."""
        by_lane: dict[int, list[int]] = defaultdict(list)
        for i, (p, _export) in enumerate(todo):
            by_lane[self._lane(p)].append(i)
        results: list[ExportOutcome | IdsyncError | None] = [None] * len(todo)

        async def run(lane: _Lane, indexes: list[int]) -> None:
            got = await self._apply_lane(lane, [todo[i][1] for i in indexes])
            for i, result in zip(indexes, got, strict=True):
                results[i] = result

        done = await asyncio.gather(
            *(run(self._lanes[k], ix) for k, ix in sorted(by_lane.items())), return_exceptions=True
        )
        failed = next((d for d in done if isinstance(d, BaseException)), None)
        if failed is not None:
            raise failed
        return [r for r in results if r is not None]

    async def _apply_lane(
        self, lane: _Lane, exports: list[PendingExport]
    ) -> list[ExportOutcome | IdsyncError]:
        if isinstance(lane.connector, BatchExport):
            return await self._apply_batches(lane, lane.connector, exports)
        results: list[ExportOutcome | IdsyncError] = []
        for export in exports:
            results.append(await self._apply_one(lane, export))
            self._applied += 1
            # Here the change is in the target; neither its result nor the ledger has recorded it.
            self._maybe_kill("after-apply")
        return results

    async def _apply_one(self, lane: _Lane, export: PendingExport) -> ExportOutcome | IdsyncError:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                return await loop.run_in_executor(lane.pool, lane.connector.apply, export)
            except RetriableError as exc:
                await self._backoff(exc, attempt)
                attempt += 1
            except FatalError as exc:
                self._fatal(exc)
                raise
            except IdsyncError as exc:
                return exc  # DataError or another per-object error: reported, the others go on
            except Exception as exc:
                return self._extension_error(exc)

    async def _apply_batches(
        self, lane: _Lane, connector: BatchExport, exports: list[PendingExport]
    ) -> list[ExportOutcome | IdsyncError]:
        """``apply_batch`` with retries: after a retriable error, resubmit from the first export it hit
        (the ones after it may have applied too; applying them again is harmless)."""
        loop = asyncio.get_running_loop()
        results: list[ExportOutcome | IdsyncError] = []
        attempt = 0
        while len(results) < len(exports):
            rest = exports[len(results) :]
            try:
                got = await loop.run_in_executor(lane.pool, connector.apply_batch, rest)
                if len(got) != len(rest):
                    raise TypeError(f"apply_batch returned {len(got)} results for {len(rest)} exports")
            except RetriableError as exc:
                await self._backoff(exc, attempt)
                attempt += 1
                continue
            except FatalError as exc:
                self._fatal(exc)
                raise
            except Exception as exc:
                err = self._extension_error(exc)
                results += [err] * len(rest)
                break
            for item in got:
                if isinstance(item, FatalError):
                    self._fatal(item)
                    raise item
                if isinstance(item, RetriableError):
                    await self._backoff(item, attempt)
                    attempt += 1
                    break
                results.append(item)
                attempt = 0
        self._applied += len(results)
        self._maybe_kill("after-apply")
        return results

    async def _backoff(self, exc: RetriableError, attempt: int) -> None:
        delay = min(0.5 * 2**attempt, self.max_backoff_s) * (0.5 + random.random() / 2)
        wait = max(delay, exc.retry_after_s or 0.0)
        log.warning("%s: %s (%s), retrying in %.1fs", self.step_id, exc.message, exc.error_type, wait)
        self.rt.counters.count(f"export-retry:{self.name}")
        await asyncio.sleep(wait)

    def _fatal(self, exc: FatalError) -> None:
        self.rt.fatal(f"{self.step_id}: {exc.error_type}: {exc.message}")

    @staticmethod
    def _extension_error(exc: Exception) -> IdsyncError:
        err = IdsyncError(f"{type(exc).__name__}: {exc}", error_type="extension-error")
        err.trace = traceback.format_exc()  # type: ignore[attr-defined]
        return err

    def _result(self, export: PendingExport, outcome: ExportOutcome | IdsyncError, out: Outputs) -> None:
        if isinstance(outcome, ExportOutcome):
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
            self.rt.counters.count(f"export-failed:{self.name}")
            self._error(
                out,
                outcome.error_type,
                f"{export.op} {export.new_dn or export.dn}: {outcome.message}",
                export,
                detail=getattr(outcome, "trace", None),
            )
            result = ExportResult(
                mv_id=export.mv_id,
                connector=self.name,
                export_id=export.export_id,
                seq=export.seq,
                status="failed",
                op=export.op,
                error_type=outcome.error_type,
                message=outcome.message,
                ts_ms=now_ms(),
            )
        out.add(self.rt.names.mv_topic(), export.mv_id.encode(), pack(result))

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
        for i, lane in enumerate(self._lanes):
            lane.pool.shutdown(wait=False)
            close = getattr(lane.connector, "close", None)
            if i and close is not None:
                close()  # the first lane's connector is the pipeline's, closed by it


__all__ = [
    "HELD_PREFIX",
    "KILL_POINT_ENV",
    "WINDOW_KEY",
    "ExportWorker",
    "committed_export_offsets",
    "export_consumer_group",
]
