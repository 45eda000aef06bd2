"""What every stage shares: settings, names, rules, stores, the output producer and the counters."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaProducer
from rocksdict import Rdict

from engine.rules import Rules, compile_rules
from schemas.codec import to_json
from schemas.config import IdsyncConfig
from schemas.wire import ErrorRecord
from streams import compression
from streams.chunks import KeptObjects, MVChunks
from streams.output import Outputs
from streams.store import Store, claim_state_dir, set_memory_budget
from streams.topics import Names

log = logging.getLogger("idsync")


@dataclass(frozen=True)
class Settings:
    """How this process runs (not what it syncs: that is the config file)."""

    bootstrap_servers: str
    data_dir: Path
    #: Consumer-group timeouts; short for the embedded broker, whose group joins are slow otherwise.
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 10.0
    #: How long a consumer fetch may wait for data. Kafka answers as soon as data arrives, so the default
    #: only bounds idle polling; the embedded broker holds fetches for the whole wait (see streams.app).
    fetch_max_wait_ms: int = 500
    #: Log the process's memory (streams.memory.memory_report) this often; 0: never.
    memory_log_s: float = 0.0


@dataclass
class Counters:
    """Run counters in MIM's vocabulary, plus produced/consumed per topic for drain detection."""

    produced: Counter[str] = field(default_factory=Counter)
    consumed: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    last_activity: float = field(default_factory=time.monotonic)
    #: Per stage: state keys processed and not saved yet (a checkpoint saves them).
    unsaved: Counter[str] = field(default_factory=Counter)
    #: Objects whose reference answers are deferred (streams.stages.metaverse): work still to do.
    deferred: int = 0

    def count(self, name: str, n: int = 1) -> None:
        self.steps[name] += n


def compression_type(setting: str) -> str | None:
    """aiokafka's ``compression_type`` for ``pipeline.compression``."""
    return None if setting == "none" else setting


class Runtime:
    """Shared by the stages of one worker process."""

    def __init__(self, settings: Settings, config: IdsyncConfig) -> None:
        self.settings = settings
        self.config = config
        self.rules: Rules = compile_rules(config)
        self.names = Names(config.name)
        self.partitions = config.pipeline.partitions
        self.counters = Counters()
        pipeline = config.pipeline
        set_memory_budget(pipeline.state_cache_mb << 20, pipeline.state_memtables_mb << 20)
        compression.set_level(pipeline.compression, pipeline.codec_level())
        #: Topics some stage of this process consumes (registered by the stage consumers).
        self.stage_topics: set[str] = set()
        self.errors: list[ErrorRecord] = []
        self._stores: dict[str, Store] = {}
        #: The metaverse store's large objects kept whole after their checkpoint (``streams.chunks``).
        self.kept = KeptObjects(config.pipeline.kept_values)
        #: Set by ``stop``: the producer and the stores are closed.
        self.closed = False
        self._topic_partitions = self._all_topics()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        #: Per stage consumer: when it processed its last batch (monotonic) and how many records its
        #: assigned partitions held after it (from the fetch's high watermarks): ``behind`` reads it.
        self.input_lag: dict[str, tuple[float, int]] = {}

    def behind(self, threshold: int, stages: Collection[str], recent_s: float = 0.5) -> bool:
        """Whether one of the ``stages`` of this process is working through a backlog (an initial load, a
        replay, an outage caught up): its last batch, processed less than ``recent_s`` ago, left at least
        ``threshold`` records waiting on its partitions (the consumer lag, from the high watermarks its
        fetches returned). The lag, not the records' timestamps: a producer outside idsync may stamp an
        import topic's change record with the source's time, and a backlog leaves young what the stages
        after it consume (a 1M load's is the join stage's, minutes long, while the metaverse stage's
        inputs are seconds old). A stage that went quiet is not behind."""
        now = time.monotonic()
        lags = self.input_lag
        return any(now - lags[s][0] < recent_s and lags[s][1] >= threshold for s in stages if s in lags)

    def record_input_lag(self, stage: str, lag: int) -> None:
        """A stage processed a batch that left ``lag`` records waiting on its partitions."""
        self.input_lag[stage] = (time.monotonic(), lag)

    # ---- topics
    def topic_partitions(self) -> dict[str, int]:
        """Every topic of this instance and its partition count (fixed for the life of the process)."""
        return self._topic_partitions

    def _all_topics(self) -> dict[str, int]:
        n = self.names
        topics = [n.join_topic(), n.links_topic(), n.mv_topic(), n.mv_changes_topic(), n.errors_topic()]
        topics.append(n.refs_topic())
        topics.append(n.confirmations_topic())
        topics.append(n.watermarks_topic())
        topics += [n.import_topic(c) for c in self.config.connectors]
        topics += [n.export_topic(c) for c in self.rules.targets]
        topics += self.changelog_topics()
        return dict.fromkeys(topics, self.partitions)

    def state_stores(self) -> list[str]:
        """Every stage state store of this instance (each has a changelog topic)."""
        return ["cs", "join", "mv", "mv-refs", *(f"export-ledger-{t}" for t in sorted(self.rules.targets))]

    def changelog_topics(self) -> list[str]:
        """The state stores' changelogs, one per store."""
        return [self.names.changelog_topic(s) for s in self.state_stores()]

    def compacted_topics(self) -> set[str]:
        """Topics that keep only the latest value per key (created with cleanup.policy=compact)."""
        return {*self.changelog_topics(), self.names.watermarks_topic(), self.names.refs_topic()}

    # ---- state
    def store(self, stage: str) -> Store:
        name = self.names.store(stage)
        if name not in self._stores:
            changelog = self.names.changelog_topic(stage) if stage in self.state_stores() else None
            root = self.settings.data_dir / "state"
            if not self._stores:
                claim_state_dir(root)
            codec = None
            if stage == "mv":
                # A metaverse object's large containers (a group's members) are held in chunks.
                least = self.config.pipeline.split_values_from
                codec = partial(MVChunks, least, kept=self.kept)
            self._stores[name] = Store(root, name, changelog, codec)
        return self._stores[name]

    def databases(self) -> list[Rdict]:
        """Every open state database of the process (``streams.store.rocksdb_memory``)."""
        return [db for s in self._stores.values() for db in s.databases()]

    def close_stores(self) -> None:
        for s in self._stores.values():
            s.close()

    # ---- producing
    async def producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers,
                    acks=1,
                    linger_ms=5,
                    max_batch_size=1 << 20,
                    max_request_size=8 << 20,
                    enable_idempotence=False,
                    compression_type=compression_type(self.config.pipeline.compression),
                    client_id=f"idsync-{self.config.name}-out",
                )
                await self._producer.start()
            return self._producer

    async def outputs(self) -> Outputs:
        return Outputs(await self.producer(), self.topic_partitions(), self.counters.produced)

    async def stop(self) -> None:
        self.closed = True
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self.close_stores()

    # ---- errors
    def record_error(self, err: ErrorRecord, outputs: Outputs) -> None:
        self.errors.append(err)
        del self.errors[:-1000]
        self.counters.count("errors")
        key = f"{err.connector or err.step_id}|{err.anchor or err.locator or ''}".encode()
        outputs.add(self.names.errors_topic(), key, to_json(err))
        where = err.locator or err.anchor or err.mv_id or ""
        log.warning("%s %s [%s] %s: %s", err.step_id, err.connector or "", where, err.error_type, err.message)

    def fatal(self, message: str) -> None:
        """Stop the process now without acking what is in flight (it is re-delivered after restart)."""
        log.critical("fatal: %s", message)
        sys.stderr.write(f"idsync: fatal: {message}\n")
        sys.stderr.flush()
        os._exit(2)


#: Collector thresholds for a running pipeline (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (50_000, 50, 1_000)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a running pipeline.

    A stage allocates millions of short-lived dicts and lists; at CPython's default thresholds the
    collector ran every few hundred of them and regularly walked the whole long-lived heap (faust,
    aiokafka, the configuration, caches): about a third of a worker's time (docs/benchmarks.md).
    What start-up built is frozen out of collection, and collections run less often. idsync's own
    structs are not tracked at all (msgspec ``gc=False``: they never form reference cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def now_ms() -> int:
    return int(time.time() * 1000)
