"""Metaverse agent (keyed by mv_id): precedence, deletion rule, outbound sync, confirmation."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from rocksdict import RdictIter

from engine.chunks import Touched
from engine.metaverse import MVOutput, due_deletions, expire, metaverse_step, metaverse_steps
from engine.references import (
    out_route,
    published_dn,
    registration_keys,
    registration_prefix,
    resolution,
)
from engine.shared import SharedMaps
from schemas.codec import pack, to_json, unpacker
from schemas.messages import (
    CSLink,
    JoinIndexUpdate,
    MVInbound,
    RefRegister,
    RefResolved,
    RefSync,
    RefValue,
)
from schemas.state import DeferredAnswer, MVObject, Registration, TablePositions, values_held
from schemas.wire import ErrorRecord, ExportConfirmed, MVChange, PendingExport
from streams.consumer import IDLE_S
from streams.output import Outputs
from streams.reftable import RefTable
from streams.runtime import now_ms
from streams.stages.base import Batch, Stage, save
from streams.store import META

log = logging.getLogger("idsync.stage")

_MV = unpacker(MVInbound)
#: How often the stage looks for objects whose deletion grace period ended without a message reaching them.
EXPIRY_INTERVAL_MS = 10_000
#: An object with at least this many references (a large group) is synced at most once per checkpoint
#: interval while its members keep answering: syncing it recomputes and plans all of its values.
LARGE_REFS = 1_000
#: Referrers whose table answers are applied together (one Batch, then a checkpoint if one is due).
REFERRER_SLICE = 200
#: Where a partition's registrations store keeps the reference table's position it was saved at.
POSITIONS_KEY = META + b"reftable-positions"
_POSITIONS = unpacker(TablePositions)
#: Deferred reference answers (``pipeline.reference_defer_ms``) are keys of the registrations store:
#: ``DEFERRED + referrer's mv_id + SEP + registration key`` -> ``DeferredAnswer`` (mv_ids hold no NUL).
DEFERRED = b"deferred\x00"
_SEP = b"\x00"
#: The worker is behind its input when a stage's last batch left at least this many records waiting on
#: its partitions (``Runtime.behind``), or the reference table's applier has this many routes left to
#: apply: a second's work and more.
BEHIND_RECORDS = 2_000
#: How often the stage looks for deferred answers to apply.
RELEASE_TICK_S = 0.25
#: At most this many objects are remembered as holding ``pipeline.reference_defer_from`` references or
#: more (``MetaverseStage._many``); past it, further ones have their answers applied as they come.
MANY_REFS_KEPT = 200_000


def deferred_prefix(mv_id: bytes) -> bytes:
    """Where the answers deferred for one referrer are kept."""
    return DEFERRED + mv_id + _SEP


def ref_count(mv: MVObject) -> int:
    """References an object holds (a group: its members), over its connectors and attributes."""
    return sum(len(refs) for link in mv.links.values() for refs in link.refs.values())


class MetaverseStage(Stage[MVObject]):
    """The metaverse step, and the referrers' side of the reference index: each object's registrations
    are keys of a second store (``mv-refs``, co-partitioned), answered from the worker's copy of the
    reference table when made and whenever the table changes their route (``apply_table``)."""

    step_id = "metaverse"
    store_name = "mv"
    state_model = MVObject

    def decode(self, topic: str, value: bytes) -> Any:
        return _MV.decode(value)

    def keys(self, topic: str, msg: Any) -> list[bytes]:
        return [msg.mv_id.encode()]

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self._grace = any(d.grace_period_s > 0 for d in rt.rules.deletion.values())
        self._next_expiry = 0
        n = rt.names
        self._changes, self._join, self._mv = n.mv_changes_topic(), n.join_topic(), n.mv_topic()
        self._exports = {c: n.export_topic(c) for c in rt.rules.targets}
        #: Large objects whose reference answers are held until the checkpoint, per partition, and when
        #: each large object was last synced (loop time; only large objects are tracked).
        self._interval_s = rt.config.pipeline.checkpoint_interval_ms / 1000
        self._held: dict[int, set[bytes]] = {}
        self._synced_at: dict[bytes, float] = {}
        #: Per partition, the large objects (``pipeline.mv_changes_by_value_from``) this worker published
        #: whole on ``mv.changes`` since it took the partition, and when (loop time): only their member
        #: changes go by value, until ``pipeline.mv_changes_whole_every_s`` has passed. A crash makes the
        #: next owner process again what followed the last checkpoint, perhaps otherwise (the reference
        #: table has moved on); its first record of each such object, whole, sets right a consumer that
        #: folded the records of both. The period bounds how far back a consumer reads for a whole record.
        self._by_value_from = rt.config.pipeline.mv_changes_by_value_from
        self._whole_every_s = float(rt.config.pipeline.mv_changes_whole_every_s)
        self._fed_whole: dict[int, dict[str, float]] = {}
        #: Registrations (``engine.references.registration_keys``), per partition like the objects.
        self.refs = rt.store("mv-refs")
        #: Writes to the registrations store until the next commit, per partition and kind of value.
        self._reg_batches: dict[tuple[int, type], Batch] = {}
        self.table = RefTable(rt)
        #: The table position each owned partition was last saved with.
        self._positions: dict[int, TablePositions] = {}
        #: Partitions being taken over whose table changes are not all replayed yet: a checkpoint meanwhile
        #: leaves their saved position as the previous owner saved it (a crash replays from there).
        self._replaying: set[int] = set()
        #: Shared with the stage's consumer: table changes are applied between batches, never during one.
        self.lock = asyncio.Lock()
        #: The consumer's checkpoint-if-due (``StageConsumer.save_if_due``; None: no consumer), called
        #: between slices of referrers while table changes are applied.
        self.save_if_due: Callable[[], Awaitable[None]] | None = None
        #: Referrers with deferred answers per partition, and when the first was deferred (loop time).
        self._defer_s = rt.config.pipeline.reference_defer_ms / 1000
        self._deferred: dict[int, dict[bytes, float]] = {}
        #: Per partition, the objects seen to hold at least ``pipeline.reference_defer_from`` references
        #: since this worker took the partition — resolved ones when it synced them, or registered in one
        #: message (a new group's members, not resolved yet): only their answers are deferred.
        self._defer_from = rt.config.pipeline.reference_defer_from
        self._many: dict[int, set[bytes]] = {}
        self._was_behind = False
        #: Routes of the reference table the applier has read and not applied yet (``_apply_table``).
        self._table_backlog = 0
        #: The stage consumers whose backlog counts (``Runtime.behind``): those that feed the metaverse, set
        #: by the app (not the exports: a slow target system is no reason to hold group changes). None set:
        #: never behind.
        self.input_stages: tuple[str, ...] = ()

    async def process(self, events: list[Any]) -> None:
        await super().process(events)
        now = now_ms()
        if self._grace and now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_INTERVAL_MS
            await self._expire_due(now)

    async def _expire_due(self, now: int) -> None:
        """Deletion rule grace periods: delete the objects whose deletion fell due (engine.deletion).

        Scans the partitions this worker owns (objects marked for deletion carry ``delete_due_ms``).
        """
        out = await self.rt.outputs()
        batches = []
        for p in sorted(self.store.owned):
            part = self.store.partition(p)
            keys = [k for k, raw in part.scan(b"") if b"delete_due_ms" in raw and k not in part.unsaved]
            keys += [k for k, mv in part.unsaved.items() if mv is not None and mv.delete_due_ms is not None]
            if not keys:
                continue
            batch = Batch(part, keys, MVObject)
            for mv_id in due_deletions([batch.get(k) for k in keys], now):
                mv, outputs = expire(self.rt.rules, batch.get(mv_id.encode()), now)
                batch.put(mv_id.encode(), mv)
                self._sized(p, mv_id.encode(), mv)
                self._emit(outputs, out, p)
            batches.append(batch)
        await self.commit(batches, out)

    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        key = msg.mv_id.encode()
        mv, outputs = self._step(batch, key, msg)
        batch.update(key, mv)
        self._sized(batch.partition, key, mv)
        self._emit(outputs, out, batch.partition)

    def _step(self, batch: Batch, key: bytes, msg: Any) -> tuple[MVObject | None, list[MVOutput]]:
        """One message applied to the object the batch holds (nothing shared: it stays as it was)."""
        return metaverse_step(
            self.rt.rules,
            batch.get(key),
            msg,
            lookup=self.table.get,
            by_value=self._by_value(batch.partition),
        )

    def handle_all(self, batch: Batch, items: list[tuple[Any, Any]], out: Outputs) -> None:
        """The messages of one metaverse object in this batch are applied together (one copy of the
        object for all: a large group hears from thousands of members at once). Should that raise,
        they are applied one by one from the object as it was, and only the failing one is
        dead-lettered."""
        by_key: dict[bytes, list[tuple[Any, Any]]] = {}
        for item in items:
            by_key.setdefault(item[1].mv_id.encode(), []).append(item)
        its: dict[int, RdictIter] = {}
        try:
            for key, group in by_key.items():
                # Answers deferred for the object come first: they are older than its messages.
                early = self._take_deferred(batch.partition, key, its)
                if not self._steps(batch, key, [*early, *(m for _ev, m in group)], out):
                    self._one_by_one(batch, key, early, out)
                    super().handle_all(batch, group, out)
        finally:
            its.clear()  # no await above, and none kept: an iterator never outlives a partition's release

    def _steps(self, batch: Batch, key: bytes, msgs: list[Any], out: Outputs) -> bool:
        """Apply one object's messages at once (False, nothing changed, if that raised)."""
        now = asyncio.get_running_loop().time()

        def settle(mv: MVObject) -> bool:
            """Sync now, or hold a large object's answers until the checkpoint when it was synced
            less than a checkpoint interval ago (its members are answering one batch after another:
            one sync per interval instead of one per batch)."""
            if self._interval_s <= 0 or ref_count(mv) < LARGE_REFS:
                return True
            if now - self._synced_at.get(key, -math.inf) < self._interval_s:
                return False
            self._synced_at[key] = now
            return True

        touched = Touched()
        # A large group's reference maps are changed in place, not copied (engine.shared): the object
        # read is not used again but to be replaced by the result.
        shared = SharedMaps()
        try:
            mv, outputs = metaverse_steps(
                self.rt.rules,
                batch.get(key),
                msgs,
                settle=settle,
                lookup=self.table.get,
                touched=touched,
                by_value=self._by_value(batch.partition),
                shared=shared,
            )
        except Exception:
            return False  # the shared maps put back as they were
        batch.update(key, mv, touched, changed=shared.changed)
        self._sized(batch.partition, key, mv)
        if mv is not None and mv.ref_sync is not None:
            self._held.setdefault(batch.partition, set()).add(key)
        for each in outputs:
            self._emit(each, out, batch.partition)
        return True

    # ---- mv.changes by value
    def _by_value(self, partition: int) -> Callable[[str], bool]:
        """Whether a member change of an object of ``partition`` may go on ``mv.changes`` by value: this
        worker published it whole since it took the partition, less than ``mv_changes_whole_every_s`` ago."""
        fed = self._fed_whole.setdefault(partition, {})
        since = asyncio.get_running_loop().time() - self._whole_every_s

        def allowed(mv_id: str) -> bool:
            at = fed.get(mv_id)
            return at is not None and at > since

        return allowed

    def _fed(self, change: MVChange, partition: int) -> None:
        """Remember a whole record of a large object (one whose member changes may go by value now), forget
        a deleted one."""
        fed = self._fed_whole.setdefault(partition, {})
        least = self._by_value_from
        if (
            change.op != "delete"
            and least is not None
            and any(len(values) >= least for values in change.attributes.values())
        ):
            fed[change.mv_id] = asyncio.get_running_loop().time()
        else:
            fed.pop(change.mv_id, None)

    # ---- the reference table
    async def read_table(self) -> None:
        """Keep this worker's copy of the reference table (a task of the app). It failing stops the
        process: the stage would wait for it for good."""
        await self._or_stop("reading", self.table.run())

    async def apply_table(self) -> None:
        """Bring the table's changes to the registrations of the partitions this worker owns, as they
        are read (a task of the app, beside the table's reader). An error here is a bug or I/O: it stops
        the process (nothing was acked)."""
        await self._or_stop("applying", self._apply_table())

    async def _or_stop(self, doing: str, work: Awaitable[None]) -> None:
        """Run one of the reference table's tasks; anything but a cancellation stops the process."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("metaverse: %s the reference table failed", doing)
            self.rt.fatal(f"reference table: {type(exc).__name__}: {exc}")

    async def _apply_table(self) -> None:
        await self.table.ready.wait()
        size = self.rt.config.pipeline.batch_size
        while True:
            await self.table.changed()
            routes, positions, records = self.table.take()
            # At most a batch of routes at a time, each under the lock: a delta round changes tens of
            # thousands of routes at once, and answering all of them in one go would hold every referrer
            # decoded together. A partition assigned meanwhile replays them itself; a checkpoint meanwhile
            # saves the position before them.
            for i in range(0, len(routes), size):
                # What is left of this take and what was read since: a backlog of the table is the
                # worker's too (``_behind``).
                self._table_backlog = len(routes) - i + self.table.backlog()
                async with self.lock:
                    await self._resolve(routes[i : i + size], sorted(self.store.owned))
            # Read meanwhile: still behind if the reader keeps ahead (the deferred answers wait for the
            # applier to catch up, not for the end of each take).
            self._table_backlog = self.table.backlog()
            self.table.done(positions, records)
            self.rt.counters.last_activity = asyncio.get_running_loop().time()

    async def _resolve(self, routes: Iterable[str], partitions: list[int]) -> None:
        """Answer the registrations to ``routes`` in ``partitions`` with the table's current values, and
        checkpoint between slices of referrers when one is due."""
        routes = list(routes)
        if not routes or not partitions:
            return
        ts = now_ms()
        for p in partitions:
            # Read through a batch of its own: one taken from ``_reg_batch`` would outlive this call when
            # nothing is answered (only a commit drops it), and a partition released meanwhile would
            # leave it reading a closed database.
            regs = Batch(self.refs.partition(p), [], Registration)
            answers: dict[bytes, list[tuple[bytes, RefResolved]]] = {}
            # One iterator for every route (most have nothing here), dropped before the first await.
            it = regs.iterator()
            for route in routes:
                found = regs.scan(registration_prefix(route).encode(), it=it)
                if not found:
                    continue
                value = self.table.get(route)
                for reg, _ in found:
                    answer = resolution(reg.decode(), value, ts)
                    answers.setdefault(answer.mv_id.encode(), []).append((reg, answer))
            del it
            # The referrers a slice at a time, and a checkpoint between slices when one is due: a delta
            # round's table changes reach most groups at once (at 1M, 2,000 department groups in one
            # slice of routes held the worker's peak memory, decoded twice over, until the next save).
            referrers = list(answers)
            for i in range(0, len(referrers), REFERRER_SLICE):
                keys = referrers[i : i + REFERRER_SLICE]
                await self._answer(p, keys, answers)
                if self.save_if_due is not None:
                    await self.save_if_due()

    async def _answer(
        self,
        p: int,
        keys: list[bytes],
        answers: dict[bytes, list[tuple[bytes, RefResolved]]],
        defer: bool = True,
    ) -> None:
        """Apply the table's answers (after the answers deferred before them) to referrers ``keys`` of
        partition ``p``, and commit them; while the worker is behind its input, defer those of the
        referrers that hold many references (``_many_refs``) instead."""
        out = await self.rt.outputs()
        if defer and self._deferring():
            later = self._many_refs(p, keys)
            if later:
                self._defer(p, later, answers)
                if len(later) == len(keys):
                    await self.commit([], out)
                    return
                kept = set(later)
                keys = [key for key in keys if key not in kept]
        batch = Batch(self.store.partition(p), keys, MVObject)
        its: dict[int, RdictIter] = {}
        try:
            for key in keys:
                early = self._take_deferred(p, key, its)
                msgs = [*early, *(answer for _reg, answer in answers.get(key, ()))]
                if msgs and not self._steps(batch, key, msgs, out):
                    self._one_by_one(batch, key, msgs, out)
        finally:
            its.clear()  # dropped before the await: a live iterator keeps the partition's database open
        await self.commit([batch], out)

    def _one_by_one(self, batch: Batch, key: bytes, msgs: list[RefResolved], out: Outputs) -> None:
        """Apply answers one by one (they failed together): only a failing one is left out, and reported."""
        for msg in msgs:
            try:
                mv, outputs = self._step(batch, key, msg)
            except Exception as exc:
                log.exception("metaverse: applying the reference table to %s failed", msg.mv_id)
                self.rt.record_error(
                    ErrorRecord(
                        step_id=self.step_id,
                        error_type="engine-error",
                        algorithm_step="metaverse",
                        mv_id=msg.mv_id,
                        message=f"reference {msg.direction} {msg.connector} {msg.key}: {exc}",
                        ts_ms=msg.ts_ms,
                    ),
                    out,
                )
                continue
            batch.update(key, mv)
            self._sized(batch.partition, key, mv)
            self._emit(outputs, out, batch.partition)

    # ---- idle work
    def idle(self, quiet_s: float) -> bool:
        """Large objects read back whole (``Stage.idle``) — once nothing came for ``IDLE_S``, or at once
        while the worker is not working through a backlog (a trickle of changes, each batch saved): not
        during a load, a replay or the table's tail (``_behind``), whose general syncs would make the
        object cold again within a checkpoint interval."""
        if quiet_s < IDLE_S and self._behind():
            return True  # later
        return super().idle(quiet_s)

    # ---- deferred answers
    def _deferring(self) -> bool:
        """Whether table answers are deferred now: allowed, and the worker is behind its input."""
        return self._defer_s > 0 and self._behind()

    @property
    def table_backlog(self) -> int:
        """Routes of the reference table read and not applied yet, as the applier last counted them."""
        return self._table_backlog

    def _behind(self) -> bool:
        """Whether the worker is working through a backlog: a stage that feeds the metaverse is
        (``Runtime.behind``), or the reference table's applier has at least ``BEHIND_RECORDS`` routes
        left to apply. The second is a load's tail: the stages have caught up with their inputs, but
        each person provisioned publishes its target DN, and its groups' registrations are answered
        from the table a slice of routes at a time — at 1M, applied as they came, a department group
        was synced and planned whole once per slice that resolved one of its members, and that was
        82% of the worker (docs/benchmarks.md, twenty-second session). Logged when it changes."""
        table = self._table_backlog >= BEHIND_RECORDS
        behind = table or self.rt.behind(BEHIND_RECORDS, self.input_stages)
        if behind != self._was_behind:
            self._was_behind = behind
            if behind:
                log.info(
                    "metaverse: behind its %s: reference answers are deferred",
                    f"reference table ({self._table_backlog} routes to apply)" if table else "input",
                )
            else:
                log.info(
                    "metaverse: caught up: applying the deferred reference answers of %d objects",
                    self.rt.counters.deferred,
                )
        return behind

    def _many_refs(self, p: int, keys: list[bytes]) -> list[bytes]:
        """Those of referrers ``keys`` whose answers are deferred, in their order: all of them with
        ``pipeline.reference_defer_from`` 0, else those known to hold that many references."""
        if self._defer_from <= 0:
            return keys
        many = self._many.get(p)
        return [key for key in keys if key in many] if many else []

    def _sized(self, p: int, key: bytes, mv: MVObject | None) -> None:
        """Remember object ``key`` of partition ``p`` as one whose answers are deferred (``_many_refs``)
        if, as just synced, it holds enough resolved references; forget it once deleted. Not forgotten
        when it shrinks: deferring a small object's answers costs a little time, never a change."""
        if self._defer_from <= 0:
            return
        many = self._many.get(p)
        if mv is None or mv.deleted:  # a deleted object kept until its deprovisioning is confirmed too
            if many:
                many.discard(key)
        elif (many is None or key not in many) and ref_count(mv) >= self._defer_from:
            self._remember_many(p, key)

    def _remember_many(self, p: int, key: bytes) -> None:
        many = self._many.setdefault(p, set())
        if key not in many and sum(map(len, self._many.values())) < MANY_REFS_KEPT:
            many.add(key)

    def _defer(
        self, p: int, keys: list[bytes], answers: dict[bytes, list[tuple[bytes, RefResolved]]]
    ) -> None:
        """Keep answers as one key each, not applied: an object hearing from many referenced objects while
        the worker works through a backlog is then decoded, synced and written once for all of them (when
        the worker catches up, when a message for it arrives, or after ``reference_defer_ms``), not once
        per checkpoint. A later answer to the same registration replaces an earlier one."""
        batch = self._reg_batch(p, DeferredAnswer)
        waiting = self._deferred.setdefault(p, {})
        now = asyncio.get_running_loop().time()
        n = 0
        for key in keys:
            prefix = deferred_prefix(key)
            for reg, answer in answers.get(key, ()):
                batch.put(prefix + reg, DeferredAnswer(value=answer.value, ts_ms=answer.ts_ms))
                n += 1
            waiting.setdefault(key, now)
        self.rt.counters.count("ref-answers-deferred", n)
        self._count_deferred()

    def _count_deferred(self) -> None:
        self.rt.counters.deferred = sum(map(len, self._deferred.values()))

    def _take_deferred(
        self, p: int, key: bytes, its: dict[int, RdictIter] | None = None
    ) -> list[RefResolved]:
        """The answers deferred for referrer ``key`` of partition ``p``, oldest registration first, removed
        from the store (in the batch that applies them). ``its``: iterators of the registrations stores
        by partition, made here as needed and shared by the calls of one pass over referrers (the
        caller drops them before it awaits; a seek costs about as much as making an iterator)."""
        waiting = self._deferred.get(p)
        if not waiting or waiting.pop(key, None) is None:
            return []
        self._count_deferred()
        batch = self._reg_batch(p, DeferredAnswer)
        prefix = deferred_prefix(key)
        it = None
        if its is not None:
            it = its.get(p)
            if it is None:
                it = its[p] = batch.iterator()
        answers = []
        for k, held in batch.scan(prefix, it=it):
            batch.put(k, None)
            answers.append(resolution(k[len(prefix) :].decode(), held.value, held.ts_ms))
        return answers

    def _load_deferred(self, p: int) -> dict[bytes, float]:
        """The referrers of partition ``p`` with deferred answers in its saved state (a partition taken
        over, or a worker restarted: they are applied as if deferred now)."""
        part = self.refs.partition(p)
        now = asyncio.get_running_loop().time()
        found: dict[bytes, float] = {}
        keys = [k for k, _ in part.scan(DEFERRED)] + part.unsaved_under(DEFERRED)
        for k in keys:
            found.setdefault(k[len(DEFERRED) :].split(_SEP, 1)[0], now)
        return found

    async def release_deferred(self) -> None:
        """Apply deferred answers when they are due (a task of the app). An error here is a bug or I/O:
        it stops the process (nothing was acked)."""
        await self._or_stop("applying deferred answers of", self._release_loop())

    async def _release_loop(self) -> None:
        while True:
            await asyncio.sleep(RELEASE_TICK_S)
            if any(self._deferred.values()):
                await self.release_due()

    async def release_due(self) -> None:
        """Apply the deferred answers that are due — all of them once the worker has caught up, and
        those that waited ``reference_defer_ms`` while it has not — oldest first, a slice of referrers
        at a time with a checkpoint between slices when one is due (as the applier does)."""
        now = asyncio.get_running_loop().time()
        everything = not self._behind()
        for p in sorted(self._deferred):
            waiting = self._deferred[p]
            if p not in self.store.owned:
                del self._deferred[p]  # handed over: its deferred answers went with its saved state
                self._count_deferred()
                continue
            due = [
                k
                for k, since in sorted(waiting.items(), key=lambda kv: kv[1])
                if everything or now - since >= self._defer_s
            ]
            for i in range(0, len(due), REFERRER_SLICE):
                async with self.lock:
                    if p not in self.store.owned:
                        break
                    keys = [k for k in due[i : i + REFERRER_SLICE] if k in waiting]
                    await self._answer(p, keys, {}, defer=False)
                    if self.save_if_due is not None:
                        await self.save_if_due()
            self.rt.counters.last_activity = asyncio.get_running_loop().time()

    def _reg_batch(self, partition: int, model: type[Registration | DeferredAnswer] = Registration) -> Batch:
        """The batch that writes registrations (or, with ``model``, deferred answers) to a partition of the
        registrations store until the next commit: one per partition and kind of value."""
        batch = self._reg_batches.get((partition, model))
        if batch is None:
            part = self.refs.partition(partition)
            batch = self._reg_batches[(partition, model)] = Batch(part, [], model)
        return batch

    async def commit(self, batches: list[Batch], out: Outputs) -> None:
        regs, self._reg_batches = list(self._reg_batches.values()), {}
        await super().commit([*batches, *regs], out)

    def unsaved(self) -> tuple[int, int]:
        keys, values = super().unsaved()
        return keys + self.refs.unsaved(), values + self.refs.unsaved_weight()

    async def assigned(self, partitions: list[int], seeded: list[int]) -> None:
        """Partitions given to this worker (their state restored): the reference table's changes since
        each was saved reach its registrations first. Where the broker had lost a partition's history
        (seeded from the local copy), its objects' target DNs go to the table again."""
        for p in partitions:
            self._fed_whole.pop(p, None)  # its large objects go on mv.changes whole first (``_by_value``)
            self._many.pop(p, None)  # sizes learnt anew: another worker may have changed its objects
        if seeded:
            await self._republish(seeded)
        await self.table.ready.wait()
        # A replay after a long absence can reach most objects of a partition: it checkpoints between
        # slices as the applier does (the unsaved bounds hold), while these partitions' saved positions
        # stay as they were until their replay is over.
        self._replaying.update(partitions)
        for p in partitions:
            # Known before the replay: its answers come after them.
            self._deferred[p] = self._load_deferred(p)
        self._count_deferred()
        for p in partitions:
            self._positions.pop(p, None)  # saved by whoever held it last: written again at the checkpoint
            await self._replay(p)
            self._replaying.discard(p)

    async def _replay(self, p: int) -> None:
        """The table's changes since partition ``p`` was saved reach its registrations."""
        part = self.refs.partition(p)
        if next(part.scan(b""), None) is None:
            return  # no registrations: nothing to bring up to date
        raw = part.get(POSITIONS_KEY)
        saved = dict(_POSITIONS.decode(raw).offsets) if raw is not None else {}
        if any(saved.get(q, 0) > self.table.read.get(q, 0) for q in saved):
            ends = await self.table.sync_end()
            if any(offset > ends.get(q, 0) + 1 for q, offset in saved.items()):
                saved = {}  # the table topic is not the one it was saved against: replay it all
        routes = self.table.routes_since(saved)
        size = self.rt.config.pipeline.batch_size
        for i in range(0, len(routes), size):  # a batch of routes at a time, as the applier does
            await self._resolve(routes[i : i + size], [p])

    async def _republish(self, partitions: list[int]) -> None:
        out = await self.rt.outputs()
        topic = self.rt.names.refs_topic()
        for p in partitions:
            batch = Batch(self.store.partition(p), [], MVObject)
            for _key, mv in batch.scan(b""):
                for connector in self.rt.rules.xref_targets:
                    dn = published_dn(mv, connector)
                    if dn is not None:
                        route = out_route(connector, mv.mv_id)
                        out.add(topic, route.encode(), pack(RefValue(route=route, value=dn, ts_ms=0)))
            await self.commit([], out)

    async def checkpoint(self) -> None:
        """Sync the objects whose answers are held (their outputs go out first), then save: saved state
        never holds answers, so neither a crash nor a partition moving to another worker can leave an
        object waiting for a sync nobody will send. Each partition's registrations are saved with the
        reference table's position they reflect (``TablePositions``)."""
        await self._settle_held()
        positions = TablePositions(offsets=dict(self.table.applied))
        for p in sorted(self.store.owned - self._replaying):
            if self._positions.get(p) != positions:
                self.refs.partition(p).stash({POSITIONS_KEY: positions}, [POSITIONS_KEY], values_held)
                self._positions[p] = positions
        # The objects first: a checkpoint cut short by a crash may then leave them saved without the
        # registrations store's part (registrations are recomputed from the inputs delivered again, a
        # deferred answer already applied is applied again, the table replays from the older position),
        # never the other way round, which would lose answers: deferred ones deleted, or a table position
        # saved past answers whose objects were not.
        await save(self.rt, self.store.opened(), self.step_id)
        await save(self.rt, self.refs.opened(), self.step_id)

    async def _settle_held(self) -> None:
        held, self._held = self._held, {}
        if not held:
            return
        now, ts = asyncio.get_running_loop().time(), now_ms()
        out = await self.rt.outputs()
        batches = []
        for p, unordered in sorted(held.items()):
            keys = sorted(unordered)
            batch = Batch(self.store.partition(p), keys, MVObject)
            for key in keys:
                mv = batch.get(key)
                if mv is None or mv.ref_sync is None:
                    continue  # synced since (a RefSync on its way found it) or gone
                touched, shared = Touched(), SharedMaps()
                mv, [outputs] = metaverse_steps(
                    self.rt.rules,
                    mv,
                    [RefSync(mv_id=key.decode(), ts_ms=ts)],
                    settle=True,
                    lookup=self.table.get,
                    touched=touched,
                    by_value=self._by_value(p),
                    shared=shared,
                )
                batch.update(key, mv, touched, changed=shared.changed)
                self._sized(p, key, mv)
                self._synced_at[key] = now
                self._emit(outputs, out, p)
            batches.append(batch)
        await self.commit(batches, out)

    def _emit(self, outputs: list[MVOutput], out: Outputs, partition: int) -> None:
        """Records keyed by this object's mv_id go to ``partition``, the one its own messages come from
        (every topic has the same partition count and partitioner): no hashing."""
        n = self.rt.names
        c = self.rt.counters
        for o in outputs:
            if isinstance(o, MVChange):
                c.count(f"mv-{o.op}")
                if self._by_value_from is not None and o.version == 1:
                    self._fed(o, partition)
                out.add(self._changes, o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, PendingExport):
                c.count(
                    f"provisioned:{o.connector}" if o.op == "add" else f"export-{o.op}-planned:{o.connector}"
                )
                out.add(self._exports[o.connector], o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, RefRegister):
                regs = self._reg_batch(partition)
                value = Registration() if o.op == "refer" else None
                for reg in registration_keys(o):
                    regs.update(reg.encode(), value)
                if o.op == "refer" and 0 < self._defer_from <= len(o.keys):
                    # A group registering its members: its answers are about to come, few resolved yet.
                    self._remember_many(partition, o.mv_id.encode())
            elif isinstance(o, RefValue):
                out.add(n.refs_topic(), o.route.encode(), pack(o))
            elif isinstance(o, JoinIndexUpdate):
                out.add(self._join, o.route.encode(), pack(o))
            elif isinstance(o, RefSync):
                out.add(self._mv, o.mv_id.encode(), pack(o), partition)
            elif isinstance(o, CSLink):
                out.add(n.links_topic(), o.anchor.encode(), pack(o))
            elif isinstance(o, ExportConfirmed):
                c.count(f"export-confirmed:{o.connector}")
                out.add(n.confirmations_topic(), o.mv_id.encode(), to_json(o), partition)
            elif isinstance(o, ErrorRecord):
                self.rt.record_error(o, out)
