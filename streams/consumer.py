"""Stage consumers: micro-batches straight from aiokafka, one consumer group per stage, state that moves
with its partition.

faust delivers records one event at a time (a channel, an Event, an ack per record: ~90 µs each,
measured in docs/benchmarks.md), which caps a pipeline of several stages far below the speed an identity
engine needs. So the hot path does not go through faust streams: each stage runs a ``StageConsumer``
— an aiokafka consumer that ``getmany``-s up to a batch of records, hands them to the stage's
``process`` in one call, and commits the offsets once the batch's outputs are acked and its state is
saved (a checkpoint: every ``pipeline.checkpoint_interval_ms``, when the stage goes idle, before a
revocation). faust
still hosts the app (its worker, services, tasks and timers); the consumers run as its tasks.

Co-partitioning: every stage consumes its topics with the range assignor, and every topic has the same
partition count, so a worker that owns partition ``p`` of one input topic owns ``p`` of all of them and
of the stage's state (streams.store).

State handover (invariant 11): when partitions are assigned, ``restore`` brings the local copy of each
partition up to date from the store's changelog before the first record is processed; when they are
revoked, the batch in flight finishes and commits first. A worker that never held the partition reads
the whole changelog; one that held it before reads only what others wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from itertools import chain
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError
from aiokafka.structs import ConsumerRecord

from streams.runtime import Runtime
from streams.store import APART, META, PartitionStore, Store

log = logging.getLogger("idsync.consumer")

#: A stage that received nothing for this long is idle: it saves its state and commits at once.
IDLE_S = 0.2
#: Key of the marker a restore writes to a changelog partition to know where "now" is (see ``restore``).
FENCE_KEY = META + b"fence"


class Event:
    """One consumed record, shaped like a faust event (``.message`` and ``.value``) for the stages."""

    __slots__ = ("message", "value")

    def __init__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.message = record
        self.value = record.value


class StageConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs one stage: consume its topics in batches, process, commit; restore state on assignment."""

    def __init__(
        self,
        rt: Runtime,
        stage: str,
        topics: list[str],
        process: Callable[[list[Any]], Awaitable[None]],
        stores: Iterable[Store],
        batch_size: int,
        checkpoint: Callable[[], Awaitable[None]] | None = None,
        unsaved: Callable[[], tuple[int, int]] | None = None,
        assigned: Callable[[list[int], list[int]], Awaitable[None]] | None = None,
        lock: asyncio.Lock | None = None,
        idle: Callable[[float], bool] | None = None,
        per_partition: int = 0,
    ) -> None:
        self.rt = rt
        self.stage = stage
        self.topics = topics
        rt.stage_topics.update(topics)
        self.process = process
        self.stores = list(stores)
        self.batch_size = batch_size
        #: Up to this many records from each partition with records fetched, ``batch_size`` in all (0: a
        #: batch as aiokafka hands it out): for a stage that works on its partitions at once (the export
        #: lanes). aiokafka hands a batch out of one partition's fetched records before the next one's, so
        #: with a backlog a batch of ``batch_size`` would hold one partition, and one lane would work while
        #: the others waited.
        self.per_partition = per_partition
        #: Saves the state of the batches processed since the last call (None: ``process`` saves its own,
        #: every batch is committed as it ends); ``unsaved`` tells how many keys wait and how many attribute
        #: values they hold (``schemas.state.values_held``).
        self.checkpoint = checkpoint
        self.unsaved = unsaved
        #: Called once partitions are assigned and restored (with those whose changelog was seeded), before
        #: their first record is processed.
        self.assigned_hook = assigned
        #: Does one piece of the stage's idle work (``Stage.idle``: large objects read back whole), given
        #: how long nothing came, and says whether any is left: called after a fetch that brought nothing,
        #: with everything saved, until it says none is left; a checkpoint or an assignment may leave more.
        self.idle = idle
        self._idle_work = False  # until partitions are assigned
        pipeline = rt.config.pipeline
        self.interval_s = pipeline.checkpoint_interval_ms / 1000
        self.max_unsaved = pipeline.checkpoint_max_keys
        self.max_unsaved_values = pipeline.checkpoint_max_values
        self.assigned: set[TopicPartition] = set()
        #: Held while a batch is processed, a checkpoint saved or partitions handed over (``lock``: shared
        #: with whatever else changes the stage's state between batches).
        self._lock = lock or asyncio.Lock()
        #: Offsets after the last record processed per partition, not committed yet (held until the
        #: state they produced is saved).
        self._processed: dict[TopicPartition, int] = {}
        #: Offset after the last record processed per partition, kept after commits: the lag is measured
        #: from it (``_record_lag``).
        self._next: dict[TopicPartition, int] = {}
        self._saved_at = self._busy_at = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        #: The last checkpoint's offset commit, still in flight while the next batch is processed.
        self._committing: asyncio.Task[None] | None = None
        #: Set when ``run`` has ended (and saved what it could).
        self.stopped = asyncio.Event()

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.rt.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=self.rt.names.group_id(self.stage),
            client_id=f"idsync-{self.rt.config.name}-{self.stage}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
        )

    async def run(self) -> None:
        """Consume until cancelled. An error that is not about data stops the process (nothing is acked)."""
        consumer = self._consumer = self._new_consumer()
        consumer.subscribe(self.topics, listener=self)
        await consumer.start()
        window_ms = self.rt.config.pipeline.batch_window_ms
        stopping = False
        try:
            while True:
                data = await consumer.getmany(
                    timeout_ms=window_ms, max_records=self.per_partition or self.batch_size
                )
                if self.per_partition and data:
                    data = await self._spread(consumer, data)
                async with self._lock:
                    # Records fetched before a revocation belong to another worker now: leave them.
                    owned = {tp: recs for tp, recs in data.items() if tp in self.assigned and recs}
                    if owned:
                        events = [Event(r) for recs in owned.values() for r in recs]
                        try:
                            await self.process(events)
                        except Exception as exc:  # never raised on bad data: this is a bug or I/O
                            log.exception("%s: batch failed", self.stage)
                            self.rt.fatal(f"stage {self.stage}: {type(exc).__name__}: {exc}")
                            raise
                        for tp, recs in owned.items():
                            self._processed[tp] = self._next[tp] = recs[-1].offset + 1
                        self._busy_at = time.monotonic()
                        self._record_lag(consumer)
                    # Idle (nothing came for a while): save now, so nothing waits on a next batch.
                    if self._dirty() and self._save_due(idle=not owned):
                        await self._save(consumer)
                    elif self.unsaved is not None:
                        self.rt.counters.unsaved[self.stage] = self.unsaved()[0]
                    if not owned and self._idle_work and not self._dirty():
                        assert self.idle is not None
                        self._idle_work = self.idle(time.monotonic() - self._busy_at)
        except asyncio.CancelledError:
            stopping = True
            raise
        finally:
            try:
                if stopping and not self.rt.closed:
                    # Stopped (SIGTERM): save what was processed, so a restart does not process it again.
                    async with self._lock:
                        await asyncio.wait_for(self._save(consumer, wait=True), 15)
            except Exception as exc:
                log.warning("%s: state not saved at stop (%s); it is processed again", self.stage, exc)
            finally:
                await self._committed(quiet=True)
                await consumer.stop()
                self.stopped.set()

    async def _spread(
        self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """``data`` with what the next partitions have fetched already (no wait: records not fetched yet go
        in a later batch), up to ``per_partition`` records each and ``batch_size`` in all. The partitions
        are taken in turn from the one after the last in ``data``, so that successive batches share the
        room among all of them (and partition p, p+1, ... go to different lanes); each partition's records
        stay in order, and one in ``data`` gets nothing more (a later batch takes its next records)."""
        room = self.batch_size - sum(map(len, data.values()))
        tps = sorted(consumer.assignment())
        start = bisect.bisect_right(tps, max(data))
        for tp in tps[start:] + tps[:start]:
            if room <= 0:
                break
            if tp in data:
                continue
            more = await consumer.getmany(tp, timeout_ms=0, max_records=min(self.per_partition, room))
            for k, recs in more.items():
                if recs:
                    data[k] = recs
                    room -= len(recs)
        return data

    def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Tell the runtime how many records wait on this stage's partitions after the batch just processed
        (``Runtime.behind``): each partition's high watermark, as the last fetch from it returned it, less
        the offset after its last record processed; a partition not processed from yet counts nothing."""
        lag = 0
        for tp in self.assigned & consumer.assignment():
            high, done = consumer.highwater(tp), self._next.get(tp)
            if high is not None and done is not None:
                lag += max(0, high - done)
        self.rt.record_input_lag(self.stage, lag)

    async def save_if_due(self) -> None:
        """Checkpoint now if one is due (the interval is over, or the unsaved state is over its bounds).
        For work on the stage's state between batches (the reference table's applier): call it with the
        lock held, between pieces of that work, so that work is bounded as batches are."""
        if self._consumer is not None and self._dirty() and self._save_due(idle=False):
            await self._save(self._consumer)

    def _dirty(self) -> bool:
        """Whether there is anything to save: records processed, or state changed between batches."""
        return bool(self._processed) or (self.unsaved is not None and self.unsaved()[0] > 0)

    def _save_due(self, idle: bool) -> bool:
        """Whether to checkpoint now: the interval is over, too many keys or attribute values wait (large
        groups decoded and held), or no record came for ``IDLE_S`` (short pauses between an upstream
        stage's batches do not count)."""
        if self.checkpoint is None:
            return True
        now = time.monotonic()
        if now - self._saved_at >= self.interval_s:
            return True
        if idle and now - self._busy_at >= min(IDLE_S, self.interval_s):
            return True
        if self.unsaved is None:
            return False
        keys, values = self.unsaved()
        return keys >= self.max_unsaved or values >= self.max_unsaved_values

    async def _save(self, consumer: AIOKafkaConsumer, wait: bool = False) -> None:
        """Checkpoint the stage's state, then commit the offsets of everything processed before it.

        The commit's round trip overlaps the next batch (``wait``: awaited here). Commits stay in order
        (the previous one is awaited first), and a revocation waits for the one in flight."""
        if self.checkpoint is not None:
            try:
                await self.checkpoint()
            except Exception as exc:
                log.exception("%s: checkpoint failed", self.stage)
                self.rt.fatal(f"stage {self.stage}: checkpoint: {type(exc).__name__}: {exc}")
                raise
            self.rt.counters.unsaved[self.stage] = 0
            self.rt.counters.last_activity = asyncio.get_running_loop().time()
        self._saved_at = time.monotonic()
        self._idle_work = self.idle is not None  # what it saved may have more for the idle stage
        await self._committed()
        offsets, self._processed = self._processed, {}
        if not offsets:
            return
        self._committing = asyncio.ensure_future(self._commit(consumer, offsets))
        if wait:
            await self._committed()

    async def _committed(self, quiet: bool = False) -> None:
        """Wait for the commit in flight, if any. Its error (one not about a rebalance) is raised here,
        or with ``quiet`` logged: the batch is then delivered again, which the steps make harmless."""
        task, self._committing = self._committing, None
        if task is None:
            return
        try:
            await task
        except Exception as exc:
            if not quiet:
                raise
            log.warning(
                "%s: offset commit failed (%s: %s); the batch is delivered again",
                self.stage,
                type(exc).__name__,
                exc,
            )

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The group is rebalancing: the new owner re-processes from the last commit (idempotent steps).
            log.info("%s: commit skipped during a rebalance (%s)", self.stage, exc)

    # ---- rebalance listener (aiokafka awaits these inside the group protocol)
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # the batch in flight finishes first, then its state is saved and committed
            consumer = self._consumer
            try:
                if consumer is not None and self._dirty():
                    await self._save(consumer, wait=True)
            except Exception as exc:
                # Not committed: the next owner processes those records again from the saved state.
                log.warning("%s: state not saved before the revocation (%s)", self.stage, exc)
            await self._committed(quiet=True)
            gone = set(revoked)
            self._processed = {tp: o for tp, o in self._processed.items() if tp not in gone}
            self._next = {tp: o for tp, o in self._next.items() if tp not in gone}
            parts = {tp.partition for tp in revoked}
            self.assigned -= set(revoked)
            still = {tp.partition for tp in self.assigned}
            for store in self.stores:
                for p in parts - still:
                    store.owned.discard(p)
                    store.release(p)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            parts = sorted({tp.partition for tp in assigned})
            started = time.monotonic()
            seeded: list[int] = []
            for store in self.stores:
                try:
                    restored = await restore(self.rt, store, parts, seeded=seeded)
                except Exception as exc:
                    # aiokafka would log and carry on, leaving these partitions unprocessed for good; a
                    # restarted worker retries the restore instead (nothing was acked meanwhile).
                    log.exception("%s: restoring %s failed", self.stage, store.name)
                    self.rt.fatal(f"stage {self.stage}: restoring {store.name}: {type(exc).__name__}: {exc}")
                    raise
                store.owned.update(parts)
                if restored:
                    log.info("%s: restored %d changelog records of %s", self.stage, restored, store.name)
            if self.assigned_hook is not None:
                try:
                    await self.assigned_hook(parts, sorted(set(seeded)))
                except Exception as exc:
                    log.exception("%s: taking over %s failed", self.stage, parts)
                    self.rt.fatal(f"stage {self.stage}: taking over {parts}: {type(exc).__name__}: {exc}")
                    raise
            self.assigned = set(assigned)
            self._idle_work = self.idle is not None
            log.debug("%s: assigned %s in %.2fs", self.stage, parts, time.monotonic() - started)


def reader(rt: Runtime, role: str) -> AIOKafkaConsumer:
    """A consumer outside any group that reads partitions it is assigned (a restore, the reference
    table's copy), with the app's fetch settings."""
    s = rt.settings
    return AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
        max_partition_fetch_bytes=4 << 20,
        client_id=f"idsync-{rt.config.name}-{role}",
    )


async def restore(
    rt: Runtime,
    store: Store,
    partitions: list[int],
    timeout_s: float = 300.0,
    seeded: list[int] | None = None,
) -> int:
    """Bring the local copy of ``partitions`` of ``store`` up to date with its changelog.

    Where "up to date" ends is found without trusting end offsets (the embedded broker under-reports
    them): a fence record with a fresh id is produced to each partition first, and the changelog is
    read from the local copy's position until that fence comes back.

    A changelog that holds less than the local copy (an embedded broker keeps history in memory only, so
    a new broker starts empty) is seeded from the local copy instead, so the next owner can restore it.
    Returns the number of state records applied; partitions seeded are added to ``seeded``.
    """
    if store.changelog is None or not partitions:
        return 0
    topic = store.changelog
    fence_id = uuid.uuid4().hex.encode()
    out = await rt.outputs()
    for p in partitions:
        out.add(topic, FENCE_KEY, fence_id, partition=p)
    fences = await out.flush()
    consumer = reader(rt, "restore")
    await consumer.start()
    applied = 0
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        beginning = await consumer.beginning_offsets(tps)
        reading: dict[TopicPartition, tuple[PartitionStore, int, bool]] = {}
        for tp in tps:
            part = store.partition(tp.partition)
            fence = fences[(topic, tp.partition)] - 1  # the fence record's own offset
            have = part.changelog_offset() or 0
            # The local copy is ahead of the log: the log was lost (new embedded broker) or recreated.
            ahead = have > fence
            start = beginning[tp] if ahead else have
            if start < beginning[tp]:
                # Compaction or retention removed records after our position: tombstones may be gone too.
                part.clear()
                start = beginning[tp]
            reading[tp] = (part, start, ahead)
        consumer.assign(list(reading))
        for tp, (_part, start, _ahead) in reading.items():
            consumer.seek(tp, start)
        pending: dict[TopicPartition, list[tuple[bytes, bytes | None]]] = {tp: [] for tp in reading}
        done: set[TopicPartition] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(reading):
            if time.monotonic() > deadline:
                raise KafkaError(f"restoring {store.name}: fence not seen within {timeout_s:.0f}s")
            data = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, recs in data.items():
                if tp in done:
                    continue
                part, _start, ahead = reading[tp]
                buf = pending[tp]
                for r in recs:
                    if r.key == FENCE_KEY:
                        if r.value == fence_id:
                            done.add(tp)
                            consumer.pause(tp)
                            break
                        continue
                    buf.append((r.key, r.value))
                if not ahead and len(buf) >= 10_000:
                    applied += _apply(part, buf, None)
                    buf.clear()
        for tp, (part, _start, ahead) in reading.items():
            end = fences[(topic, tp.partition)]  # just after the fence
            buf = pending[tp]
            if ahead and not buf:
                await _seed(rt, part, topic)
                part.write({}, end)
                if seeded is not None:
                    seeded.append(tp.partition)
                continue
            if ahead:
                part.clear()  # the log has someone's history: it wins over this stale copy
            applied += _apply(part, buf, end)
    finally:
        await consumer.stop()
    return applied


def _apply(part: PartitionStore, records: list[tuple[bytes, bytes | None]], offset: int | None) -> int:
    """Write changelog records in log order (the last value of a key wins, as it would one by one)."""
    part.write(dict(records), offset)
    return len(records)


async def _seed(rt: Runtime, part: PartitionStore, topic: str) -> None:
    """Publish every local entry of ``part`` to its changelog partition."""
    out = await rt.outputs()
    n = 0
    # The objects, then what they hold apart (large containers' chunks): scans of their own.
    for key, value in chain(part.scan(b""), part.scan(APART)):
        out.add(topic, key, value, partition=part.partition)
        n += 1
        if n % 5000 == 0:
            await out.flush()
    await out.flush()
    if n:
        log.info("seeded changelog %s[%d] with %d entries from the local copy", topic, part.partition, n)
