"""Kafka topic connector (``kind: kafka``): an external topic, such as a Debezium change stream of an HR
database, read as a connected system (docs/connectors/kafka.md)."""

from connectors.kafka.config import KafkaConnectorConfig
from connectors.kafka.connector import KIND, KafkaConnector

__all__ = ["KIND", "KafkaConnector", "KafkaConnectorConfig"]
