"""Delta import and follow runners: a connector's changes since its stored watermark, published to
``import.<connector>``, with the watermark stored durably once the broker has acked the records before it.

Resume semantics (at-least-once): the stored watermark is the last ``Checkpoint`` whose preceding records
the broker acknowledged. A runner that stops or crashes resumes from it, so it may publish a change again
but never misses one. A re-published change is harmless (invariant 5): its ``event_id`` is a digest of the
object's image, so staging drops it as a duplicate when that image is already the connector-space object.

Versions: records carry ``Versions.next()`` (wall-clock nanoseconds, strictly increasing in a process),
the same clock as a full import's ``run_version``, so a delta published after a full import started is
newer than the snapshot (staging keeps it; ``stage_absent`` does not delete it) and a full-import record
read before a later delta is stale against it.

When the connector says the watermark expired (``CursorExpired``), or there is none yet, the runner does a
full refresh: it takes ``current_watermark()`` first, runs a bracketed full import (deletes derived from
absence by the run-end markers), stores that watermark and continues from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.base import (
    Checkpoint,
    Connector,
    CursorExpired,
    DeletedObject,
    DeltaImport,
    DeltaItem,
    Follow,
    FullImport,
    ImportedObject,
    ImportFailure,
)
from schemas.errors import ConfigError, FatalError, IdsyncError, RetriableError
from schemas.records import WatermarkRecord
from streams.importer import change_record, full_import, record_import_error
from streams.output import Outputs, partition_for
from streams.runtime import Runtime, now_ms

log = logging.getLogger("idsync")

Mode = Literal["full", "delta", "follow"]

#: Records published between two flushes when the connector checkpoints rarely (a long delta).
CHUNK = 1000
#: Reconnect backoff of the follow loop (the connector may reconnect on its own first, e.g. LDAP).
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0


class Versions:
    """Strictly increasing record versions on the wall clock (ns), comparable with full-import versions."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


VERSIONS = Versions()


# ====================================================================== watermark store
class WatermarkStore:
    """Watermarks on the compacted topic ``idsync.<instance>.watermarks``, one key per connector.

    Reading does not trust ListOffsets (the embedded broker under-reports end offsets): it appends a
    tombstone with a fresh key to the connector's partition and reads from the beginning until it sees it;
    the last value for the connector before it is the stored watermark. The tombstone leaves no key behind
    on a compacted topic.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.topic = rt.names.watermarks_topic()

    def _partition(self, connector: str) -> int:
        return partition_for(connector.encode(), self.rt.topic_partitions()[self.topic])

    async def read(self, connector: str, timeout_s: float = 60.0) -> WatermarkRecord | None:
        rt = self.rt
        p = self._partition(connector)
        marker = f"\x00read:{uuid.uuid4().hex}".encode()
        out = await rt.outputs()
        out.add(self.topic, marker, None, partition=p)
        await out.flush()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=rt.settings.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
            client_id=f"idsync-{rt.config.name}-watermarks",
        )
        await consumer.start()
        found: WatermarkRecord | None = None
        try:
            tp = TopicPartition(self.topic, p)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout_s
            while True:
                if time.monotonic() > deadline:
                    raise RetriableError(
                        f"reading the watermark of {connector!r} from {self.topic} timed out",
                        error_type="watermark-read-timeout",
                    )
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
                for r in batches.get(tp, []):
                    if r.key == marker:
                        return found
                    if r.key != connector.encode():
                        continue
                    if r.value is None:
                        found = None  # an operator reset the watermark
                        continue
                    try:
                        found = WatermarkRecord.model_validate_json(r.value)
                    except ValueError as exc:
                        log.warning(
                            "%s offset %d: unreadable watermark record skipped (%s)", tp, r.offset, exc
                        )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)

    async def write(self, connector: str, watermark: str, via: str) -> None:
        """Store ``watermark``; returns once the broker acknowledged it."""
        rec = WatermarkRecord(connector=connector, watermark=watermark, via=via, ts_ms=now_ms())  # type: ignore[arg-type]
        out = await self.rt.outputs()
        out.add(
            self.topic,
            connector.encode(),
            rec.model_dump_json().encode(),
            partition=self._partition(connector),
        )
        await out.flush()

    async def reset(self, connector: str) -> None:
        """Forget the watermark (the next delta or follow starts with a full refresh)."""
        out = await self.rt.outputs()
        out.add(self.topic, connector.encode(), None, partition=self._partition(connector))
        await out.flush()


# ====================================================================== publishing
def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


@dataclass
class DeltaReport:
    """What one delta run or one follow session published."""

    connector: str
    mode: str
    changes: int = 0
    deletes: int = 0
    failures: int = 0
    checkpoints: int = 0
    full_refreshes: int = 0
    watermark: str | None = None
    seconds: float = 0.0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)


class _Publisher:
    """Turns delta items into change records on ``import.<connector>``; a Checkpoint flushes and stores."""

    def __init__(self, rt: Runtime, name: str, store: WatermarkStore, report: DeltaReport, via: str) -> None:
        self.rt = rt
        self.name = name
        self.store = store
        self.report = report
        self.via = via
        self.topic = rt.names.import_topic(name)
        self.out: Outputs | None = None

    async def add(self, item: DeltaItem) -> None:
        if self.out is None:
            self.out = await self.rt.outputs()
        out = self.out
        name, rep = self.name, self.report
        if isinstance(item, Checkpoint):
            # The records before it must be acked before the watermark that skips them is stored.
            await out.flush()
            await self.store.write(name, item.watermark, self.via)
            rep.checkpoints += 1
            rep.watermark = item.watermark
            return
        if isinstance(item, ImportedObject):
            version = VERSIONS.next()
            # The same image gets the same event id: a re-published change is a duplicate for staging.
            event = _digest("u", item.dn, item.object_type, item.attributes)
            value = change_record(
                name, "u", item, version, f"{name}:{item.anchor}:{event}", watermark=rep.watermark or ""
            )
            out.add(self.topic, item.anchor.encode(), value)
            rep.changes += 1
            self.rt.counters.count(f"imported:{name}")
        elif isinstance(item, DeletedObject):
            if not item.anchor:
                rep.failures += 1
                self._error(
                    "delete-without-anchor",
                    item.locator or item.dn or "?",
                    f"the connector reported a delete of {item.dn or item.locator!r} without its anchor; "
                    "it was not applied (a full import removes the object)",
                    out,
                )
                return
            event_id = f"{name}:{item.anchor}:deleted"
            value = change_record(name, "d", item, VERSIONS.next(), event_id, watermark=rep.watermark or "")
            out.add(self.topic, item.anchor.encode(), value)
            rep.deletes += 1
            self.rt.counters.count(f"imported:{name}")
        elif isinstance(item, ImportFailure):
            rep.failures += 1
            self._error(item.error_type, item.locator, item.message, out, item.raw)
        if len(out) >= CHUNK:
            await out.flush()

    def _error(
        self, error_type: str, locator: str, message: str, out: Outputs, raw: str | None = None
    ) -> None:
        record_import_error(self.rt, out, self.name, "delta-import", error_type, locator, message, raw)

    async def flush(self) -> None:
        """Publish what is pending (records after the last checkpoint: re-read on resume, harmless)."""
        if self.out is not None:
            await self.out.flush()


_END = object()


async def _threaded(
    make: Callable[[], Iterable[DeltaItem]], maxsize: int = CHUNK
) -> AsyncIterator[DeltaItem]:
    """Iterate a blocking connector iterator in a thread of its own; bounded, so a slow broker slows it.

    The consumer side awaits the queue: no polling. If the consumer stops early, the thread is left to
    finish on its own once the producer side notices (the caller sets the connector's stop event).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    abandoned = threading.Event()

    def put(obj: Any) -> bool:
        fut = asyncio.run_coroutine_threadsafe(queue.put(obj), loop)
        while True:
            try:
                fut.result(timeout=1.0)
                return True
            except TimeoutError:
                if abandoned.is_set():
                    fut.cancel()
                    return False
            except Exception:  # the loop is gone
                return False

    def run() -> None:
        try:
            for item in make():
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:
            put(exc)

    thread = threading.Thread(target=run, name="idsync-delta", daemon=True)
    thread.start()
    try:
        while True:
            obj = await queue.get()
            if obj is _END:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj
    finally:
        abandoned.set()
        while not queue.empty():  # unblock a put waiting on a full queue
            queue.get_nowait()


# ====================================================================== runs
def _require(connector: Connector, proto: type, what: str, name: str) -> None:
    if not isinstance(connector, proto):
        raise ConfigError(f"connectors.{name}: the connector cannot {what}")


async def full_refresh(
    rt: Runtime, name: str, connector: Any, store: WatermarkStore, report: DeltaReport
) -> str:
    """Take the current watermark, run a bracketed full import, store the watermark: deltas go on from it."""
    loop = asyncio.get_running_loop()
    _require(connector, FullImport, "full import (needed for a full refresh)", name)
    watermark = str(await loop.run_in_executor(None, connector.current_watermark))
    log.warning("%s: full refresh (bracketed full import, deletes derived from absence)", name)
    imported = await full_import(rt, name, connector)
    await store.write(name, watermark, "full")
    report.full_refreshes += 1
    report.changes += imported.objects
    report.failures += imported.failures
    report.watermark = watermark
    return watermark


async def run_delta(
    rt: Runtime, name: str, connector: Any, store: WatermarkStore | None = None
) -> DeltaReport:
    """One delta import since the stored watermark (a full refresh when there is none or it expired)."""
    _require(connector, DeltaImport, "delta import", name)
    store = store or WatermarkStore(rt)
    report = DeltaReport(name, "delta")
    started = time.monotonic()
    stored = await store.read(name)
    if stored is None:
        log.warning("%s: no stored watermark yet", name)
        await full_refresh(rt, name, connector, store, report)
    else:
        report.watermark = stored.watermark
        pub = _Publisher(rt, name, store, report, "delta")
        try:
            async with contextlib.aclosing(
                _threaded(lambda: connector.delta_import(stored.watermark))
            ) as items:
                async for item in items:
                    await pub.add(item)
            await pub.flush()
        except CursorExpired as exc:
            await pub.flush()
            log.warning("%s: %s", name, exc)
            await full_refresh(rt, name, connector, store, report)
    report.seconds = time.monotonic() - started
    return report


async def run_full(
    rt: Runtime, name: str, connector: Any, store: WatermarkStore | None = None
) -> DeltaReport:
    """A full import; for a delta-capable connector a full refresh, so deltas continue after it."""
    report = DeltaReport(name, "full")
    started = time.monotonic()
    if isinstance(connector, DeltaImport):
        await full_refresh(rt, name, connector, store or WatermarkStore(rt), report)
    else:
        _require(connector, FullImport, "full import", name)
        imported = await full_import(rt, name, connector)
        report.changes, report.failures = imported.objects, imported.failures
    report.seconds = time.monotonic() - started
    return report


async def run_follow(
    rt: Runtime,
    name: str,
    connector: Any,
    stop: asyncio.Event,
    store: WatermarkStore | None = None,
    report: DeltaReport | None = None,
) -> DeltaReport:
    """Follow the connector until ``stop`` is set: resume from the stored watermark, publish as changes
    arrive, store each checkpoint once acked; full refresh on an expired cursor; reconnect with a capped
    exponential backoff on a retriable error; a fatal error ends the run (raised)."""
    _require(connector, Follow, "follow", name)
    store = store or WatermarkStore(rt)
    report = report or DeltaReport(name, "follow")
    started = time.monotonic()
    backoff = BACKOFF_INITIAL_S
    watermark: str | None = None
    loaded = False
    try:
        while not stop.is_set():
            try:
                if not loaded:
                    stored = await store.read(name)
                    loaded = True
                    watermark = stored.watermark if stored else None
                    if watermark is None:
                        log.warning("%s: no stored watermark yet", name)
                        watermark = await full_refresh(rt, name, connector, store, report)
                before = report.checkpoints
                try:
                    await _follow_session(rt, name, connector, stop, store, report, watermark)
                finally:
                    # Only what was stored: a restart after an error re-reads the rest (harmless).
                    watermark = report.watermark or watermark
                    if report.checkpoints > before:
                        backoff = BACKOFF_INITIAL_S  # the connection worked again
                if stop.is_set():
                    break
                reason = "the connector ended its follow"
            except CursorExpired as exc:
                log.warning("%s: %s", name, exc)
                watermark = await full_refresh(rt, name, connector, store, report)
                backoff = BACKOFF_INITIAL_S
                continue
            except FatalError:
                raise
            except (IdsyncError, KafkaError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            report.reconnects += 1
            report.errors.append(reason)
            del report.errors[:-20]
            log.warning("%s: follow interrupted (%s); resuming in %.1f s", name, reason, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
    finally:
        report.seconds = time.monotonic() - started
    return report


async def _follow_session(
    rt: Runtime,
    name: str,
    connector: Any,
    stop: asyncio.Event,
    store: WatermarkStore,
    report: DeltaReport,
    watermark: str | None,
) -> None:
    """One call of ``connector.follow`` until it returns, raises or ``stop`` is set."""
    thread_stop = threading.Event()
    pub = _Publisher(rt, name, store, report, "follow")
    report.watermark = watermark

    async def relay_stop() -> None:
        await stop.wait()
        thread_stop.set()

    relay = asyncio.create_task(relay_stop())
    try:
        async with contextlib.aclosing(_threaded(lambda: connector.follow(watermark, thread_stop))) as items:
            async for item in items:
                await pub.add(item)
    finally:
        thread_stop.set()
        relay.cancel()
        with contextlib.suppress(Exception):
            await pub.flush()


# ====================================================================== entry points
def follow_connectors(rt: Runtime) -> list[str]:
    """Connectors whose configuration says ``import_mode: follow``."""
    return [n for n, c in rt.config.connectors.items() if getattr(c, "import_mode", "full") == "follow"]


def check_mode(name: str, connector: Connector, mode: Mode) -> None:
    """A clear configuration error when the connector lacks the capability the mode needs."""
    need = {
        "full": (FullImport, "full import"),
        "delta": (DeltaImport, "delta import"),
        "follow": (Follow, "follow"),
    }
    proto, what = need[mode]
    if not isinstance(connector, proto):
        raise ConfigError(f"connectors.{name}: {mode} mode needs a connector that can {what}")
    if mode != "full" and not isinstance(connector, FullImport):
        raise ConfigError(f"connectors.{name}: {mode} mode needs full import too (for a full refresh)")


def _follow_task(rt: Runtime, name: str, connector: Any) -> Callable[[], Any]:
    """A no-argument coroutine function (faust passes the app to tasks that take an argument)."""

    async def task() -> None:
        stop = asyncio.Event()
        try:
            await run_follow(rt, name, connector, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
        except FatalError as exc:
            rt.fatal(f"follow of {name}: {exc.error_type}: {exc}")
        finally:
            connector.close()

    return task


def worker_followers(pipeline: Any) -> list[Callable[[], Any]]:
    """faust tasks for ``idsync worker``: one follow loop per follow-mode connector, each on a connector
    instance of its own (the export worker keeps its own). Stops when the worker stops."""
    from streams.connectors import build_connector

    rt: Runtime = pipeline.rt
    tasks = []
    for name in follow_connectors(rt):
        connector = build_connector(name, rt.config.connectors[name])
        check_mode(name, connector, "follow")
        tasks.append(_follow_task(rt, name, connector))
    return tasks


async def run_import(rt: Runtime, name: str, mode: Mode, stop: asyncio.Event | None = None) -> DeltaReport:
    """``idsync import``: one full or delta import of ``name``, or follow it until ``stop``."""
    from streams.app import ensure_topics
    from streams.connectors import build_connector

    if name not in rt.config.connectors:
        known = ", ".join(sorted(rt.config.connectors))
        raise ConfigError(f"no connector {name!r} in the configuration (connectors: {known})")
    connector = build_connector(name, rt.config.connectors[name])
    try:
        check_mode(name, connector, mode)
        await ensure_topics(rt)  # the watermark topic among them, compacted
        if mode == "full":
            return await run_full(rt, name, connector)
        if mode == "delta":
            return await run_delta(rt, name, connector)
        return await run_follow(rt, name, connector, stop or asyncio.Event())
    finally:
        connector.close()
        await rt.stop()


def start_followers(pipeline: Any) -> int:
    """Called by ``idsync worker`` before it starts (and creates the topics, the compacted watermark topic
    among them): adds one follow task per follow-mode connector to the app. Returns how many."""
    tasks = worker_followers(pipeline)
    for task in tasks:
        pipeline.app.task(task)
    return len(tasks)


def import_command(args: Any, settings: Any) -> int:
    """``idsync import <connector> [--full|--delta|--follow]``: the mode defaults to the connector's
    ``import_mode``. A follow runs until SIGTERM or SIGINT; the others print what they published."""
    import signal

    from streams.config import load_config
    from streams.runtime import Runtime

    if not settings.bootstrap_servers:
        raise ConfigError("idsync import needs --bootstrap-servers (or IDSYNC_BOOTSTRAP_SERVERS)")
    config = load_config(args.config_path)
    if args.connector not in config.connectors:
        known = ", ".join(sorted(config.connectors))
        raise ConfigError(f"no connector {args.connector!r} in {args.config_path} (connectors: {known})")
    mode: Mode = args.mode or getattr(config.connectors[args.connector], "import_mode", "full")
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> DeltaReport:
        rt = Runtime(settings, config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if mode == "follow":
            print(f"following {args.connector} (stop with SIGTERM or Ctrl-C)", flush=True)
        return await run_import(rt, args.connector, mode, stop)

    report = asyncio.run(main())
    print(
        f"{report.connector}: {mode} import: {report.changes} changed, {report.deletes} deleted, "
        f"{report.failures} failures, {report.checkpoints} checkpoints, {report.full_refreshes} full "
        f"refreshes, {report.reconnects} reconnects in {report.seconds:.1f}s",
        flush=True,
    )
    return 1 if report.failures else 0
