"""The conformance suite on the Kafka topic connector: a Debezium change stream on the embedded broker.

The connector has no export, so the suite's export checks skip; it has no credentials on this broker
(the embedded Tansu runs without SASL), so the wrong-credentials check skips too.
"""

from __future__ import annotations

import itertools

import pytest

from connectors.base import Connector
from connectors.kafka import KafkaConnector, KafkaConnectorConfig
from streams.broker import EmbeddedBroker, free_port
from tests.conformance.suite import ConformanceSuite, Harness
from tests.fixtures.kafka import create_topic, debezium, kafka_broker, produce, row_key

__all__ = ["kafka_broker"]  # the fixture, imported for pytest

_topics = itertools.count(1)


class KafkaHarness(Harness):
    """Out-of-band changes are Debezium events produced to the topic, as Debezium would for an HR table."""

    kind = "kafka"
    key_attr = "login"
    change_attr = "title"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"conf.hr.employees-{next(_topics)}"
        create_topic(bootstrap, self.topic, partitions=3)
        self.rows: dict[str, dict[str, object]] = {}
        self.ids: dict[str, int] = {}
        self._next_id = itertools.count(1)

    def _config(self, bootstrap: str) -> KafkaConnectorConfig:
        return KafkaConnectorConfig(
            kind="kafka",
            bootstrap_servers=[bootstrap],
            topic=self.topic,
            anchor=["id"],
            attributes={"employee_id": "id", "login": "login", "title": "title", "groups": "groups"},
            request_timeout_s=5,
        )

    def connector(self) -> Connector:
        return KafkaConnector("hr", self._config(self.bootstrap))

    def _send(self, *messages: tuple[bytes, bytes | None]) -> None:
        produce(self.bootstrap, self.topic, [(k, v, None) for k, v in messages])

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.ids[key] = next(self._next_id)
            self.rows[key] = {
                "id": self.ids[key],
                "login": key,
                "title": "Engineer",
                "groups": ["staff", "all"],
            }
        self._send(*[(row_key(self.ids[k]), debezium("c", after=self.rows[k])) for k in keys])

    def change(self, key: str, value: str) -> None:
        before = dict(self.rows[key])
        self.rows[key]["title"] = value
        self._send((row_key(self.ids[key]), debezium("u", before=before, after=self.rows[key])))

    def delete(self, key: str) -> None:
        row = self.rows.pop(key)
        k = row_key(self.ids.pop(key))
        self._send((k, debezium("d", before=row)), (k, None))

    def read(self, key: str) -> dict[str, list[str]] | None:
        raise NotImplementedError("no export: the suite never reads")

    def unreachable(self) -> Connector | None:
        return KafkaConnector("hr", self._config(f"127.0.0.1:{free_port()}"))


class TestKafkaConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, kafka_broker: EmbeddedBroker) -> Harness:
        return KafkaHarness(kafka_broker.bootstrap)
