"""What the benchmark observes over Kafka: producing at full speed or at a fixed rate, watching a topic,
waiting until a consumer group has processed everything, and the timestamps of the last records."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from connectors.kafka.client import exact_ends
from streams.bench.records import Message
from streams.output import Outputs
from streams.reftable import FENCE_KEY

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


#: How long the generator keeps retrying a flush the broker did not acknowledge before it fails the run.
RETRY_S = 120.0


class GeneratorStats:
    """What the generator's flushes met (a run reports it: a retried change's latency includes its retry)."""

    def __init__(self) -> None:
        #: Failed flushes the generator retried.
        self.retries = 0


STATS = GeneratorStats()


async def flush(out: Outputs, deadline_s: float = RETRY_S) -> None:
    """``out.flush()``, retried as the pipeline's stages retry theirs (``streams.stages.base.flush``): the
    records stay pending and are all sent again. Under overload aiokafka times a queued batch out early
    (``add_batch`` takes the time already waited off its timeout at every pass), which is no reason to fail
    a run whose broker is up; a broker that acknowledges nothing for ``deadline_s`` still fails it, and so
    does at once an error that is neither that nor retriable (a record over the broker's limit)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    delay = 0.2
    while True:
        try:
            await out.flush()
            return
        except KafkaError as exc:
            # A batch timed out in the accumulator, or an error the broker says may pass: retried. Anything
            # else (a record too large) fails at once.
            if not (exc.retriable or isinstance(exc, KafkaTimeoutError)) or loop.time() + delay > give_up:
                raise
            log.warning("bench generator: producing failed (%s), retrying in %.1fs", exc, delay)
            STATS.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def produce_all(out: Outputs, messages: Iterable[Message], chunk: int = 20_000) -> int:
    """Publish every message as fast as the batch API allows; returns how many."""
    n = 0
    for topic, key, value, partition in messages:
        out.add(topic, key, value, partition)
        n += 1
        if n % chunk == 0:
            await flush(out)
    await flush(out)
    return n


async def produce_at_rate(
    new_out: Callable[[], Outputs],
    make: Callable[[int], Message],
    rate: int,
    seconds: float,
    sent: dict[int, int],
    in_flight: int = 64,
) -> tuple[int, float]:
    """Offer ``rate`` messages per second for ``seconds``: every 5 ms tick publishes what the clock says is
    due by then, so a slow tick does not lower the rate; each tick's records go out in their own
    ``Outputs`` (``new_out()``) without waiting for earlier ticks' acks, at most ``in_flight`` of them
    unacknowledged (past that the generator waits: the rate it reaches says so). ``sent[i]`` = send time
    (ms). Returns how many were sent and over how many seconds: the offered rate actually reached."""
    tick = 0.005
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[Any]] = set()
    i = 0
    while (elapsed := loop.time() - start) < seconds:
        due = int(rate * elapsed)
        if i < due:
            out = new_out()
            stamp = now_ms()
            while i < due:
                out.add(*make(i))
                sent[i] = stamp
                i += 1
            pending.add(asyncio.ensure_future(flush(out)))
        if len(pending) >= in_flight:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a send that failed past its retries fails the run
        next_at = start + tick * (int((loop.time() - start) / tick) + 1)
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    took = loop.time() - start
    for task in pending:
        await task
    return i, took


class Watcher:
    """Reads a topic from its current end (or the beginning) in the background."""

    def __init__(
        self, bootstrap: str, topic: str, on_record: Callable[[Any], None], from_start: bool = False
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_record = on_record
        self.from_start = from_start
        self.count = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> Watcher:
        c = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=20
        )
        await c.start()
        parts = c.partitions_for_topic(self.topic) or set()
        for _ in range(100):
            if parts:
                break
            await asyncio.sleep(0.05)
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        c.assign(tps)
        if self.from_start:
            await c.seek_to_beginning(*tps)
        else:
            await c.seek_to_end(*tps)
            for tp in tps:
                await c.position(tp)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=10_000)
            for records in batches.values():
                for r in records:
                    self.count += 1
                    self.on_record(r)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await _quietly(self._consumer.stop())


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


async def true_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 60.0
) -> dict[TopicPartition, tuple[int, int]]:
    """(end offset, newest record timestamp) per partition (0, 0 when empty).

    The end is exact on Tansu too (``connectors.kafka.client.exact_ends``: Tansu's ListOffsets counts
    batches); the timestamp is read off the last record itself.
    """
    ends = await exact_ends(consumer, tps, timeout_s)
    result = {tp: (ends[tp], 0) for tp in tps}
    live = [tp for tp in tps if ends[tp] > 0]
    if not live:
        return result
    consumer.assign(live)
    for tp in live:
        consumer.seek(tp, ends[tp] - 1)
    waiting = set(live)
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no last record within {timeout_s:.0f}s for {sorted(map(str, waiting))}")
        for tp, records in (await consumer.getmany(*waiting, timeout_ms=100)).items():
            for r in records:
                if r.offset + 1 >= ends[tp]:
                    result[tp] = (ends[tp], r.timestamp)
                    waiting.discard(tp)
    return result


async def wait_drained(
    bootstrap: str,
    groups: dict[str, list[str]],
    timeout_s: float = 1800.0,
    produced: dict[str, int] | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """Until each group's committed offsets reach the end of its topics (checked twice in a row).

    ``produced``: records known to be on a topic. The embedded broker can answer ListOffsets with 0 for a
    moment after a produce was acknowledged; without a floor, an empty-looking topic counts as drained.
    ``check``: called on every round, raises to give up (a worker that died will never drain anything).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        # A topic the client has no metadata for would count as drained: wait until every one is known.
        wanted = {t for topics in groups.values() for t in topics}
        for _ in range(600):
            if wanted <= await consumer.topics():
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"topics {sorted(wanted - await consumer.topics())} do not exist")
        per_group = {
            g: [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            for g, topics in groups.items()
        }
        every = sorted({tp for tps in per_group.values() for tp in tps})
        deadline = time.monotonic() + timeout_s
        stable = 0
        while stable < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"groups {sorted(groups)} did not drain within {timeout_s:.0f}s")
            if check is not None:
                check()
            try:
                ends = {tp: end for tp, (end, _ts) in (await true_ends(consumer, every)).items()}
            except TimeoutError as exc:
                # A broker under a large load can leave a probe fetch unanswered for a minute (the embedded
                # broker answered RequestTimedOut during a 1M load): this round tells nothing, the next
                # one asks again; the overall deadline and ``check`` still end a wait that never drains.
                log.warning("drain check: %s; asking again", exc)
                stable = 0
                await asyncio.sleep(1.0)
                continue
            behind = 0
            consumed: dict[str, int] = {}
            for group, tps in per_group.items():
                committed = await admin.list_consumer_group_offsets(group, partitions=tps)
                # A partition the group never committed reports -1.
                done = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in tps}
                behind += sum(max(0, ends[tp] - done[tp]) for tp in tps)
                for tp, offset in done.items():
                    consumed[tp.topic] = consumed.get(tp.topic, 0) + offset
            # Offsets count records, so a group has consumed all of a topic's records when its committed
            # offsets add up to them, whatever the broker's end offsets say.
            for topic, count in (produced or {}).items():
                behind += max(0, count - consumed.get(topic, 0))
            stable = stable + 1 if behind == 0 else 0
            await asyncio.sleep(0.1)
    finally:
        await _quietly(consumer.stop())
        await _quietly(admin.close())


async def _quietly(aw: Any, timeout_s: float = 5.0) -> None:
    """Close a client without letting a broker that never answers the goodbye hold the bench up."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(aw, timeout_s)


async def last_timestamp(bootstrap: str, topics: list[str]) -> int:
    """The newest record timestamp (ms) across the topics (0 when empty)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return max((ts for _end, ts in (await true_ends(consumer, tps)).values()), default=0)
    finally:
        await _quietly(consumer.stop())


async def topic_sizes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Records per topic (summed over partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        sizes = dict.fromkeys(topics, 0)
        for tp, (end, _ts) in (await true_ends(consumer, tps)).items():
            sizes[tp.topic] += end
        return sizes
    finally:
        await _quietly(consumer.stop())


def message_kind(value: bytes | None) -> str:
    """A label for one internal message (``schemas.messages``): its kind, with what tells its role apart —
    a DN claim's op, a registration's op and direction (``ref-register refer/in``), a reference-table
    value's route family, a join-index update's op, a join request's phase, a reference answer's
    direction."""
    try:
        msg = msgspec.msgpack.decode(value or b"")
    except msgspec.DecodeError:
        return "undecodable"
    if not isinstance(msg, dict):
        return "undecodable"
    kind = str(msg.get("kind", "?"))
    if kind == "ref":
        return f"ref {msg.get('op')}"
    if kind == "ref-register":
        return f"ref-register {msg.get('op')}/{msg.get('direction', 'in')}"
    if kind == "ref-value":
        return f"ref-value {str(msg.get('route', '')).split('|', 1)[0]}"
    if kind == "index":
        return f"index {msg.get('op', 'leave')}"
    if kind == "join":
        return f"join {msg.get('phase', 'search')}"
    if kind == "ref-resolved":
        return f"ref-resolved {msg.get('direction', 'in')}"
    return kind


async def read_all(
    bootstrap: str, topics: list[str], timeout_s: float, last: int = 0
) -> AsyncIterator[tuple[str, list[ConsumerRecord[bytes, bytes]]]]:
    """Every record of ``topics`` (with ``last``, the newest ``last`` of each partition), up to (at least) the
    ends they had when called, one fetched batch at a time; TimeoutError when that takes longer than
    ``timeout_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await true_ends(consumer, tps)
        consumer.assign(tps)
        if last:
            for tp in tps:
                consumer.seek(tp, max(0, ends[tp][0] - last))
        else:
            await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp][0] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=100_000)
            for tp, records in batches.items():
                yield tp.topic, records
                if records and records[-1].offset + 1 >= ends[tp][0]:
                    remaining.discard(tp)
        if remaining:
            raise TimeoutError(f"reading {', '.join(topics)} took over {timeout_s:.0f}s")
    finally:
        await _quietly(consumer.stop())


async def message_kinds(bootstrap: str, topics: list[str], timeout_s: float) -> dict[str, dict[str, int]]:
    """Internal messages per topic and kind (``message_kind``), read from the beginning of each topic:
    which parts of the protocol the inputs cost."""
    out: dict[str, Counter[str]] = {t: Counter() for t in topics}
    async for topic, records in read_all(bootstrap, topics, timeout_s):
        # A reference-table reader's fence (streams.reftable) carries an id, not a message.
        out[topic].update("fence" if r.key == FENCE_KEY else message_kind(r.value) for r in records)
    return {t: dict(c.most_common()) for t, c in out.items()}


async def timeline(
    bootstrap: str, topics: list[str], since_ms: int, bucket_ms: int = 250
) -> dict[str, list[int]]:
    """Records per topic per time bucket since ``since_ms``: where a phase spends its time."""
    out: dict[str, list[int]] = {t: [] for t in topics}
    with contextlib.suppress(TimeoutError):  # a diagnostic: what was read by then is shown
        async for topic, records in read_all(bootstrap, topics, 120):
            row = out[topic]
            for r in records:
                if r.timestamp >= since_ms:
                    b = (r.timestamp - since_ms) // bucket_ms
                    row.extend([0] * (b + 1 - len(row)))
                    row[b] += 1
    return out


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await _quietly(admin.close())


async def producer(bootstrap: str) -> AIOKafkaProducer:
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=2,
        max_batch_size=1 << 20,
        enable_idempotence=False,
        client_id="idsync-bench",
    )
    await p.start()
    return p
