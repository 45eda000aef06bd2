"""The bench's offered load: ``produce_at_rate`` publishes what the clock says is due, without waiting for
each tick's acks, and says how many it sent over how long (the latency run reports that rate, not the
one it aimed at). On the embedded broker; the assertions are about what was sent, not how fast."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from streams.bench import kafka
from streams.broker import EmbeddedBroker
from streams.output import Outputs

pytestmark = pytest.mark.integration


def test_the_generator_sends_what_is_due_by_the_clock_and_reports_it(tmp_path: Path) -> None:
    rate, seconds = 2000, 1.0

    async def scenario() -> tuple[int, float, dict[int, int], int]:
        with EmbeddedBroker(tmp_path) as broker:
            await kafka.create_topic(broker.bootstrap, "offered", 2)
            producer = await kafka.producer(broker.bootstrap)
            produced: Counter[str] = Counter()
            try:

                def new_out() -> Outputs:
                    return Outputs(producer, {"offered": 2}, produced)

                sent: dict[int, int] = {}
                n, took = await kafka.produce_at_rate(
                    new_out, lambda i: ("offered", str(i).encode(), b"x", None), rate, seconds, sent
                )
            finally:
                await producer.stop()
            on_topic = (await kafka.topic_sizes(broker.bootstrap, ["offered"]))["offered"]
            return n, took, sent, on_topic

    n, took, sent, on_topic = asyncio.run(scenario())
    assert took >= seconds
    # Every change due while the run lasted went out (a tick may fall up to a few ms short of the end),
    # each acknowledged, each with its send time.
    assert rate * (took - 0.25) <= n <= rate * took + 1
    assert on_topic == n == len(sent)
    assert list(sent) == list(range(n))
    assert all(a <= b for a, b in zip(list(sent.values()), list(sent.values())[1:], strict=False))


def test_latency_windows_split_the_samples_by_send_time() -> None:
    from streams.bench.run import _windows

    samples = [(100.0, 10.0), (100.5, 30.0), (102.1, 200.0), (107.9, 50.0)]
    windows = _windows(samples, width_s=2.0)
    # 0-2 s, 2-4 s and 6-8 s after the first send; the empty 4-6 s window is left out.
    assert [w["from_s"] for w in windows] == [0.0, 2.0, 6.0]
    assert [w["max"] for w in windows] == [30.0, 200.0, 50.0]
    assert windows[0]["p50"] == 30.0 and windows[1]["p99"] == 200.0
    assert _windows([]) == []


async def one_record_on(broker: EmbeddedBroker, topic: str) -> None:
    """A new one-partition topic holding one record."""
    await kafka.create_topic(broker.bootstrap, topic, 1)
    producer = await kafka.producer(broker.bootstrap)
    try:
        await kafka.produce_all(Outputs(producer, {topic: 1}, Counter()), [(topic, b"k", b"v", None)])
    finally:
        await producer.stop()


def test_waiting_for_a_drain_gives_up_when_a_worker_died(tmp_path: Path) -> None:
    """A group nobody consumes for never drains: the bench's liveness check ends the wait at once instead
    of after the (half-hour) timeout."""
    calls = 0

    def worker_died() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("worker 0 exited with 1")

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path) as broker:
            await one_record_on(broker, "in")
            await kafka.wait_drained(
                broker.bootstrap, {"nobody": ["in"]}, timeout_s=600, produced={"in": 1}, check=worker_died
            )

    with pytest.raises(RuntimeError, match="worker 0 exited"):
        asyncio.run(scenario())
    assert calls == 3


def test_a_drain_check_the_broker_leaves_unanswered_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe fetch the broker does not answer in time (a 1M load made the embedded broker answer
    RequestTimedOut for a minute) fails that round only: the wait asks again and ends when the group has
    drained, instead of ending the whole run."""
    real = kafka.true_ends
    failures = 0

    async def slow_broker(*args: object, **kwargs: object) -> object:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise TimeoutError("no fetch response within 60s for partitions ['in[0]']")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kafka, "true_ends", slow_broker)

    async def scenario() -> None:
        with EmbeddedBroker(tmp_path) as broker:
            await one_record_on(broker, "in")
            # The group has consumed the record: the wait ends once a round gets an answer.
            reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="reader")
            await reader.start()
            try:
                reader.assign([TopicPartition("in", 0)])
                await reader.commit({TopicPartition("in", 0): 1})
            finally:
                await reader.stop()
            await kafka.wait_drained(broker.bootstrap, {"reader": ["in"]}, timeout_s=60, produced={"in": 1})

    asyncio.run(scenario())
    assert failures == 2


class Flaky(Outputs):
    """Outputs whose first ``failures`` flushes fail with ``error`` — by default as aiokafka's accumulator
    fails a batch it queued too long (``KafkaTimeoutError``) — before anything is sent; later ones go to
    the real broker."""

    def __init__(self, *args: object, failures: int, error: type[Exception] = KafkaTimeoutError) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.failures = failures
        self.error = error
        self.attempts = 0

    async def flush(self) -> dict[tuple[str, int], int]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error()
        return await super().flush()


def test_the_generator_retries_a_flush_the_broker_did_not_acknowledge(tmp_path: Path) -> None:
    """A queued batch timed out under overload is sent again, not a failed run; a flush that keeps failing
    past the deadline still fails it, and one that cannot succeed fails at once."""

    async def scenario() -> tuple[int, int, int]:
        with EmbeddedBroker(tmp_path) as broker:
            await kafka.create_topic(broker.bootstrap, "retried", 1)
            producer = await kafka.producer(broker.bootstrap)
            try:
                before = kafka.STATS.retries
                out = Flaky(producer, {"retried": 1}, Counter(), failures=2)
                n = await kafka.produce_all(out, [("retried", str(i).encode(), b"v", None) for i in range(5)])
                retried = kafka.STATS.retries - before
                stuck = Flaky(producer, {"retried": 1}, Counter(), failures=1_000)
                stuck.add("retried", b"k", b"never")
                with pytest.raises(KafkaTimeoutError):
                    await kafka.flush(stuck, deadline_s=1.0)
                # A record the broker will never take is not retried.
                too_large = Flaky(
                    producer, {"retried": 1}, Counter(), failures=1, error=MessageSizeTooLargeError
                )
                too_large.add("retried", b"k", b"never")
                with pytest.raises(MessageSizeTooLargeError):
                    await kafka.flush(too_large)
                assert too_large.attempts == 1
            finally:
                await producer.stop()
            on_topic = (await kafka.topic_sizes(broker.bootstrap, ["retried"]))["retried"]
            return n, retried, on_topic

    n, retried, on_topic = asyncio.run(scenario())
    assert n == 5 and retried == 2
    assert on_topic == 5  # each record once: the failed attempts sent nothing
