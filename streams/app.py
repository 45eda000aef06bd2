"""The app factory: builds the faust app and the stage consumers for one configuration.

No global app: the caller builds it (``create_app``) and runs it. faust hosts the app (worker, services,
tasks); each stage runs as a task that consumes its topics in micro-batches (streams.consumer), because
faust's per-event delivery would cost more than the whole sync step of an identity.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from connectors.base import Connector, Export
from schemas.config import IdsyncConfig
from streams.connectors import build_connector
from streams.consumer import StageConsumer
from streams.memory import log_memory
from streams.runtime import Runtime, Settings
from streams.stages.export import ExportWorker
from streams.stages.join import JoinStage
from streams.stages.metaverse import MetaverseStage
from streams.stages.staging import StagingStage

log = logging.getLogger("idsync")


class Pipeline:
    """The built app with everything its agents use."""

    def __init__(self, app: faust.App, rt: Runtime, connectors: dict[str, Connector]) -> None:
        self.app = app
        self.rt = rt
        self.connectors = connectors
        self.export_workers: list[ExportWorker] = []
        self.consumers: list[StageConsumer] = []
        #: Further tasks of the app: the reference table's reader and its applier.
        self.tasks: list[Callable[[], Awaitable[None]]] = []
        self.closers: list[Callable[[], None]] = []

    def close(self) -> None:
        for close in self.closers:
            close()
        for w in self.export_workers:
            w.close()
        for c in self.connectors.values():
            c.close()


def _install_fetch_wait_setting() -> None:
    """Let each app choose its consumer's fetch wait (faust hard-codes fetch_max_wait_ms=1500).

    On Kafka a fetch returns as soon as data arrives, whatever the wait. The embedded broker (Tansu) holds an
    empty fetch for its whole wait even when records arrive meanwhile, so every stage-to-stage hop would add
    up to half a second of latency; its apps use a short wait instead (``Settings.fetch_max_wait_ms``).
    """
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = thread._create_worker_consumer
    if getattr(original, "_idsync_fetch_wait", False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = getattr(self.app, "idsync_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)
        return consumer

    create._idsync_fetch_wait = True  # type: ignore[attr-defined]
    thread._create_worker_consumer = create


def create_app(settings: Settings, config: IdsyncConfig, exports: bool = True) -> Pipeline:
    """Build the faust app and the stage agents for ``config``."""
    rt = Runtime(settings, config)
    n = rt.names
    app = faust.App(
        n.group_id(),
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        topic_partitions=rt.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=0.5,
        producer_acks=1,
        stream_wait_empty=False,
    )
    # The stages consume through their own batch consumers: faust's consumer, conductor, table manager and
    # producer would only join an empty consumer group. The app keeps its worker, services and tasks.
    app.boot_strategy = app.BootStrategy(app, enable_kafka=False)

    size = config.pipeline.batch_size
    staging = StagingStage(rt)
    imports = [n.import_topic(c) for c in config.connectors]
    join = JoinStage(rt)
    mv = MetaverseStage(rt)
    connectors = {name: build_connector(name, cfg) for name, cfg in config.connectors.items()}
    pipeline = Pipeline(app, rt, connectors)
    pipeline.consumers += [
        StageConsumer(
            rt, name, topics, s.process, stores, size, s.checkpoint, s.unsaved, s.assigned, lock, s.idle
        )
        for name, topics, s, stores, lock in (
            ("staging", [*imports, n.links_topic()], staging, [staging.store], None),
            ("join", [n.join_topic()], join, [join.store], None),
            # The metaverse stage's registrations move with its objects; table changes reach them under
            # the consumer's lock (between batches).
            ("metaverse", [n.mv_topic()], mv, [mv.store, mv.refs], mv.lock),
        )
    ]
    # The table's applier checkpoints through the metaverse consumer, between slices of its work.
    mv.save_if_due = next(c for c in pipeline.consumers if c.stage == "metaverse").save_if_due
    # Whose backlog defers reference answers: these three consumers feed the metaverse (not the exports).
    mv.input_stages = tuple(c.stage for c in pipeline.consumers)
    pipeline.tasks += [mv.read_table, mv.apply_table, mv.release_deferred]
    if settings.memory_log_s > 0:
        stages = (staging, join, mv)
        pipeline.tasks.append(
            partial(
                log_memory,
                settings.memory_log_s,
                lambda: [*rt.databases(), mv.table.db],
                lambda: sum(s.unsaved()[1] for s in stages),
                lambda: {
                    "deferred_objects": rt.counters.deferred,
                    "answers_deferred": rt.counters.steps["ref-answers-deferred"],
                    "table_backlog": mv.table_backlog,
                    "kept_objects": len(rt.kept),
                    "kept_values": rt.kept.values,
                },
            )
        )
    pipeline.closers.append(mv.table.close)
    if exports:
        for target in sorted(rt.rules.targets):
            conn = connectors[target]
            if not isinstance(conn, Export):
                raise TypeError(f"connector {target!r} is an export target but cannot export")
            # More lanes than partitions would have nothing to do.
            lanes = min(config.connectors[target].export_connections, rt.partitions)
            more: list[Export] = []
            for _ in range(lanes - 1):
                extra = build_connector(target, config.connectors[target])
                assert isinstance(extra, Export)
                more.append(extra)
            worker = ExportWorker(rt, target, conn, more)
            pipeline.export_workers.append(worker)
            pipeline.consumers.append(
                StageConsumer(
                    rt,
                    f"export-{target}",
                    [n.export_topic(target)],
                    worker.process,
                    [worker.ledger],
                    # Each lane its share of a batch, at most a run of ``batch_max`` per lane.
                    worker.batch_max * worker.lanes,
                    per_partition=worker.batch_max,
                )
            )
    for consumer in pipeline.consumers:
        app.task(consumer.run)
    for task in pipeline.tasks:
        app.task(task)
    return pipeline


async def ensure_topics(rt: Runtime) -> None:
    """Create every topic with the configured partition count (co-partitioning depends on it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=rt.settings.bootstrap_servers, client_id="idsync-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        compacted = rt.compacted_topics()
        missing = [
            NewTopic(
                name=t,
                num_partitions=p,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if t in compacted else {},
            )
            for t, p in rt.topic_partitions().items()
            if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        described = await admin.describe_topics(list(rt.topic_partitions()))
        for d in described:
            count = len(d.get("partitions", []))
            if count and count != rt.partitions:
                raise RuntimeError(
                    f"topic {d['topic']} has {count} partitions, the configuration says {rt.partitions}; "
                    "co-partitioned stages need the same count"
                )
    finally:
        await admin.close()
