"""aiokafka under a blocking connector API: a private event loop thread, a group-less reader, error mapping.

The reader never joins a consumer group: it assigns the topic's partitions itself and seeks to the
offsets it is told, so nothing is committed on the broker and no rebalance ever delays a run; the
watermark (``connectors.kafka.watermark``) is the only position.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka import errors as kerr
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from connectors.kafka.config import KafkaConnectorConfig
from schemas.errors import FatalError, IdsyncError, RetriableError

T = TypeVar("T")

_AUTH_ERRORS = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.AuthenticationMethodNotSupported,
    kerr.UnsupportedSaslMechanismError,
)
_PERMISSION_ERRORS = (kerr.TopicAuthorizationFailedError, kerr.ClusterAuthorizationFailedError)


async def exact_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The end offset of every partition, exact on real Kafka and on Tansu, whatever its load.

    ListOffsets is exact on Kafka but Tansu answers it with the base offset of the last record batch plus
    one, short of the end when that batch holds several records. A fetch response carries the partition's
    true end (the last stable offset; the high watermark on brokers without transactions), so one fetch
    is made from the reported end minus one, a record that exists on both brokers, and the larger figure
    is the end. The answer waits for that fetch response, never for a quiet period (a slow broker would
    make a quiet period end early). Leaves ``consumer`` assigned to the probed partitions.
    """
    reported = await consumer.end_offsets(tps)
    begins = await consumer.beginning_offsets(tps)
    ends = {tp: reported[tp] for tp in tps}
    probe = [tp for tp in tps if reported[tp] > begins[tp]]
    if not probe:
        return ends
    consumer.assign(probe)  # a fresh assignment: no high watermark known yet
    for tp in probe:
        consumer.seek(tp, reported[tp] - 1)
    deadline = time.monotonic() + timeout_s
    while pending := [tp for tp in probe if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no fetch response within {timeout_s:.0f}s for partitions "
                f"{sorted(f'{tp.topic}[{tp.partition}]' for tp in pending)}"
            )
        await consumer.getmany(*pending, timeout_ms=100, max_records=1)
    for tp in probe:
        stable = consumer.last_stable_offset(tp)
        high = consumer.highwater(tp) or 0
        ends[tp] = max(ends[tp], stable if stable is not None and stable >= 0 else high)
    return ends


class LoopThread:
    """One asyncio loop on a daemon thread; blocking callers submit coroutines to it.

    aiokafka is asyncio-only while connector methods are blocking and may be resumed from any executor
    thread (a generator's ``next`` runs wherever the runtime calls it); one loop owned by the connector
    keeps every aiokafka object on the loop it was created on.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self._name, daemon=True)
                self._thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    @property
    def running(self) -> bool:
        return self._loop is not None

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


def redact(text: str, config: KafkaConnectorConfig) -> str:
    """Scrubs the SASL password, should any library ever echo it."""
    secret = config.password.get_secret_value() if config.password is not None else ""
    return text.replace(secret, "***") if secret else text


def _detail(exc: BaseException, config: KafkaConnectorConfig) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text, config)


def map_error(exc: BaseException, config: KafkaConnectorConfig, *, starting: bool) -> IdsyncError:
    """The idsync error for an aiokafka / socket failure (``starting``: at the start of a run)."""
    if isinstance(exc, IdsyncError):
        return exc
    where = config.display()
    detail = _detail(exc, config)
    if isinstance(exc, _AUTH_ERRORS):
        return FatalError(
            f"Kafka refused the credentials for {where}: {detail}", error_type="no-start-credentials"
        )
    if isinstance(exc, _PERMISSION_ERRORS):
        return FatalError(f"Reading {where} is not permitted: {detail}", error_type="no-start-permission")
    return RetriableError(
        f"Cannot reach Kafka for {where}: {detail}",
        error_type="no-start-connection" if starting else "cd-connection-failure",
    )


class Reader:
    """One group-less consumer of the configured topic, on the connector's loop."""

    def __init__(self, config: KafkaConnectorConfig) -> None:
        self.config = config
        self.consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []

    def _security(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"security_protocol": cfg.security_protocol}
        if cfg.security_protocol.endswith("SSL"):
            # create_ssl_context verifies the certificate and the host name.
            out["ssl_context"] = create_ssl_context(cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None)
        if cfg.security_protocol.startswith("SASL_"):
            assert cfg.password is not None  # the config model requires it
            out["sasl_mechanism"] = cfg.sasl_mechanism
            out["sasl_plain_username"] = cfg.username
            out["sasl_plain_password"] = cfg.password.get_secret_value()
        return out

    async def open(self) -> list[TopicPartition]:
        """Connects and reads the topic's partitions; the topic is never auto-created."""
        cfg = self.config
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=cfg.client_id,
            group_id=None,
            enable_auto_commit=False,
            # A position that is gone (retention) must fail, not jump silently: the delta would miss records.
            auto_offset_reset="none",
            isolation_level="read_committed",
            request_timeout_ms=int(cfg.request_timeout_s * 1000),
            max_poll_records=cfg.max_records,
            **self._security(),
        )
        try:
            await self.consumer.start()
        except (TimeoutError, kerr.KafkaError, OSError) as exc:
            raise await self._start_failure(exc) from None
        try:
            # All topics' metadata: naming the topic in a metadata request would auto-create it.
            cluster = await self.consumer._client.fetch_all_metadata()
        except (TimeoutError, kerr.KafkaError, OSError) as exc:
            raise map_error(exc, cfg, starting=True) from None
        if cfg.topic not in cluster.topics():
            raise FatalError(
                f"Topic {cfg.topic!r} does not exist on {','.join(cfg.bootstrap_servers)} "
                "(or this client may not describe it)",
                error_type="no-start-bad-topic",
            )
        parts = cluster.partitions_for_topic(cfg.topic) or set()
        if not parts:
            raise RetriableError(
                f"Topic {cfg.topic!r} has no partition available yet", error_type="no-start-connection"
            )
        self.partitions = [TopicPartition(cfg.topic, p) for p in sorted(parts)]
        return self.partitions

    async def _start_failure(self, exc: BaseException) -> IdsyncError:
        """aiokafka reports every bootstrap failure as 'Unable to bootstrap'; with SASL, one direct
        connection tells refused credentials apart from an unreachable broker."""
        cfg = self.config
        if cfg.security_protocol.startswith("SASL_"):
            for server in cfg.bootstrap_servers:
                host, _, port = server.rpartition(":")
                try:
                    conn = await create_conn(
                        host.strip("[]"),
                        int(port),
                        client_id=cfg.client_id,
                        request_timeout_ms=int(cfg.request_timeout_s * 1000),
                        **self._security(),
                    )
                except _AUTH_ERRORS as auth:
                    return map_error(auth, cfg, starting=True)
                except (TimeoutError, kerr.KafkaError, OSError):
                    continue
                conn.close()
        return map_error(exc, cfg, starting=True)

    def _c(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("the reader is not open")
        return self.consumer

    async def bounds(self) -> dict[TopicPartition, tuple[int, int]]:
        """(first offset, end offset) of every partition, the end exact on real Kafka and on Tansu.

        ListOffsets is exact on Kafka but Tansu answers it with the base offset of the last record batch
        plus one, short of the end when that batch holds several records. A fetch response carries the
        partition's true end (the last stable offset; the high watermark on brokers without
        transactions), so one fetch is made from the reported end minus one, a record that exists on
        both brokers, and the larger figure is the end.
        """
        c = self._c()
        tps = self.partitions
        begins = await c.beginning_offsets(tps)
        try:
            ends = await exact_ends(c, tps, self.config.request_timeout_s)
        except TimeoutError as exc:
            raise RetriableError(
                f"Kafka did not answer a fetch of {self.config.display()} ({exc})",
                error_type="cd-connection-failure",
            ) from exc
        ends = {tp: max(ends[tp], begins[tp]) for tp in tps}
        return {tp: (begins[tp], ends[tp]) for tp in tps}

    async def seek(self, starts: dict[TopicPartition, int]) -> None:
        c = self._c()
        c.assign(list(starts))
        for tp, offset in starts.items():
            c.seek(tp, offset)

    async def fetch(
        self, tps: list[TopicPartition], timeout_ms: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await self._c().getmany(
            *tps, timeout_ms=timeout_ms, max_records=self.config.max_records
        )
        return batches

    async def positions(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        c = self._c()
        return {tp: await c.position(tp) for tp in tps}

    async def close(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)
