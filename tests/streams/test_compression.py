"""pipeline.compression: what idsync produces is compressed on the wire and in the log, and reads back."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from schemas.errors import ConfigError
from streams import compression
from streams.app import ensure_topics
from streams.bench.records import bench_config
from streams.broker import EmbeddedBroker
from streams.config import load_config
from streams.runtime import Runtime, Settings

pytestmark = pytest.mark.integration

#: Codec ids of the record batch attributes (Kafka's protocol: the low three bits).
CODECS = {"none": 0, "gzip": 1, "lz4": 3, "zstd": 4}


def config(tmp: Path, compression: str | None, level: int | None = None) -> Path:
    """The bench's configuration with ``pipeline.compression`` set to ``compression`` (None: not set), and
    ``pipeline.compression_level`` to ``level`` (None: not set)."""
    hr = tmp / "hr.csv"
    hr.write_text("employee_id\n")
    pipeline = {"compression_level": level} if level is not None else None
    name = f"c-{compression or 'default'}-{level or 'default'}"
    return bench_config(name, tmp, 2, hr, compression=compression, pipeline=pipeline)


async def stored_codecs(bootstrap: str, topic: str, partition: int) -> list[int]:
    """The codec of every record batch the broker holds for a partition, read with a raw Fetch (a
    consumer decompresses and does not say)."""
    return (await stored(bootstrap, topic, partition))[0]


async def stored(bootstrap: str, topic: str, partition: int) -> tuple[list[int], int]:
    """The codec of every record batch the broker holds for a partition and their size in bytes."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        assert node is not None
        request = FetchRequest(100, 1, 1 << 24, 0, [(topic, [(partition, 0, 1 << 24)])])
        response: Any = await client.send(node, request)
        ((_topic, parts),) = response.topics
        (part,) = parts
        # Every version's partition entry starts (partition, error_code, ...) and ends with the records.
        assert part[1] == 0
        raw = part[-1]
        records = MemoryRecords(raw)
        codecs = []
        while (batch := records.next_batch()) is not None:
            codecs.append(batch.compression_type)
        return codecs, len(raw)
    finally:
        await client.close()


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd", None])
def test_outputs_are_stored_compressed_and_read_back(tmp_path: Path, compression: str | None) -> None:
    """Each codec on the wire and in the log; a configuration that names none gets zstd (the embedded
    broker holds every batch in memory: uncompressed, a 300k load took it to 7.7 GB, docs/benchmarks.md)."""

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            cfg = load_config(config(tmp_path, compression))
            rt = Runtime(Settings(broker.bootstrap, tmp_path / "data", fetch_max_wait_ms=10), cfg)
            await ensure_topics(rt)
            topic = rt.names.mv_topic()
            sent = {f"mv-{i}".encode(): b"cn=user%d,ou=people,dc=example,dc=org" % i * 8 for i in range(300)}
            out = await rt.outputs()
            for key, value in sent.items():
                out.add(topic, key, value, partition=0)
            await out.flush()

            codecs = await stored_codecs(broker.bootstrap, topic, 0)
            assert codecs and set(codecs) == {CODECS[compression or "zstd"]}

            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
            await consumer.start()
            try:
                tp = TopicPartition(topic, 0)
                consumer.assign([tp])
                consumer.seek(tp, 0)
                got: dict[bytes, bytes] = {}
                for _ in range(100):
                    for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                        got.update((r.key, r.value) for r in records if r.key and r.value)
                    if len(got) == len(sent):
                        break
                assert got == sent
            finally:
                await consumer.stop()
                await rt.stop()

    asyncio.run(scenario())


def test_an_unknown_codec_fails_at_startup_naming_the_field(tmp_path: Path) -> None:
    path = config(tmp_path, "none")
    data = yaml.safe_load(path.read_text())
    data["pipeline"]["compression"] = "brotli"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"pipeline\.compression"):
        load_config(path)


def test_a_codec_without_its_library_fails_at_startup_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def without_cramjam(name: str, package: str | None = None) -> Any:
        if name == "cramjam":
            raise ImportError("No module named 'cramjam'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_cramjam)
    with pytest.raises(ConfigError, match=r"pipeline\.compression.*pip install cramjam"):
        load_config(config(tmp_path, "zstd"))


def test_the_compression_level_reaches_the_batches_on_the_wire(tmp_path: Path) -> None:
    """``pipeline.compression_level``: the same records produced at zstd 1 (the default) and at zstd 19
    are stored as batches of the codec, the higher level's smaller; each runtime sets the level its
    configuration names (aiokafka's producer has no level of its own: ``streams.compression``)."""

    async def produce_at(broker: EmbeddedBroker, level: int | None) -> tuple[list[int], int]:
        cfg = load_config(config(tmp_path, "zstd", level))
        rt = Runtime(Settings(broker.bootstrap, tmp_path / f"data-{level}", fetch_max_wait_ms=10), cfg)
        assert compression.level_in_use("zstd") == (level or 1)
        await ensure_topics(rt)
        topic = rt.names.mv_topic()
        out = await rt.outputs()
        for i in range(2000):
            out.add(
                topic, b"mv-%d" % i, b"cn=user%d,ou=people,dc=example,dc=org;" % (i * 7919 % 5000) * 20, 0
            )
        await out.flush()
        try:
            return await stored(broker.bootstrap, topic, 0)
        finally:
            await rt.stop()

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path / "broker") as broker:
            fast_codecs, fast_bytes = await produce_at(broker, None)
            small_codecs, small_bytes = await produce_at(broker, 19)
        assert set(fast_codecs) == set(small_codecs) == {CODECS["zstd"]}
        assert small_bytes < fast_bytes * 0.95, (small_bytes, fast_bytes)

    try:
        asyncio.run(scenario())
    finally:
        compression.set_level("zstd", None)


@pytest.mark.parametrize(
    ("codec", "level", "says"),
    [
        ("zstd", 0, "zstd levels are 1 to 22, not 0"),
        ("zstd", 23, "zstd levels are 1 to 22, not 23"),
        ("gzip", 10, "gzip levels are 1 to 9, not 10"),
        ("snappy", 1, "snappy compression has no levels"),
        ("none", 3, "none compression has no levels"),
    ],
)
def test_a_compression_level_the_codec_has_not_fails_at_startup_naming_the_field(
    tmp_path: Path, codec: str, level: int, says: str
) -> None:
    with pytest.raises(ConfigError, match=rf"pipeline[^\n]*\n?.*compression_level: {says}"):
        load_config(config(tmp_path, codec, level))
