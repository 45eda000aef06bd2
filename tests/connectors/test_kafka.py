"""The Kafka topic connector against the real embedded broker (Tansu), fed Debezium-shaped change events
and plain JSON objects by a real producer."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from connectors import base, registry
from connectors.base import Checkpoint, CursorExpired, DeletedObject, ImportedObject, ImportFailure
from connectors.kafka import KafkaConnector, KafkaConnectorConfig
from schemas.errors import FatalError, RetriableError
from streams.broker import EmbeddedBroker, free_port
from tests.fixtures.kafka import as_json, create_topic, debezium, kafka_broker, produce, row_key

pytestmark = pytest.mark.integration
__all__ = ["kafka_broker"]  # the fixture, imported for pytest

_names = itertools.count(1)
Make = Callable[..., KafkaConnector]


@pytest.fixture
def topic(kafka_broker: EmbeddedBroker) -> str:
    name = f"hr.public.employees-{next(_names)}"
    create_topic(kafka_broker.bootstrap, name, partitions=3)
    return name


@pytest.fixture
def make(kafka_broker: EmbeddedBroker, topic: str) -> Iterator[Make]:
    made: list[KafkaConnector] = []

    def build(**fields: Any) -> KafkaConnector:
        data: dict[str, Any] = {"kind": "kafka", "bootstrap_servers": kafka_broker.bootstrap, "topic": topic}
        data.update(fields)
        if "anchor" not in data and not data.get("anchor_from_key"):
            data["anchor"] = "id"
        conn = KafkaConnector("hr", KafkaConnectorConfig.model_validate(data))
        made.append(conn)
        return conn

    yield build
    for conn in made:
        conn.close()


def send(broker: EmbeddedBroker, topic: str, *messages: tuple[bytes | None, bytes | None]) -> None:
    produce(broker.bootstrap, topic, [(k, v, None) for k, v in messages])


def person(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": i, "login": f"user{i}", "title": "Engineer", **extra}


def objects(items: list[Any]) -> dict[str, ImportedObject]:
    return {i.anchor: i for i in items if isinstance(i, ImportedObject)}


def parse_locator(locator: str) -> tuple[str, int, int]:
    topic, _, rest = locator.rpartition("/")
    partition, _, offset = rest.partition("@")
    return topic, int(partition), int(offset)


# ====================================================================== full import
def test_full_import_folds_debezium_events_to_the_latest_image(
    kafka_broker: EmbeddedBroker, topic: str, make: Make
) -> None:
    send(
        kafka_broker,
        topic,
        (row_key(1), debezium("r", after=person(1))),  # snapshot read
        (row_key(2, wrapped=True), debezium("c", after=person(2), wrapped=True)),
        (row_key(3), debezium("c", after=person(3))),
        (row_key(4), debezium("c", after=person(4))),
        (row_key(1), debezium("u", before=person(1), after=person(1, title="Manager"))),
        # Replica identity default: the before image holds only the key columns.
        (row_key(2, wrapped=True), debezium("d", before={"id": 2}, wrapped=True)),
        (row_key(2, wrapped=True), None),
        (row_key(4), None),  # a tombstone alone (compaction removed the 'd'): still gone
    )
    conn = make()
    items = list(conn.full_import())
    assert not [i for i in items if isinstance(i, ImportFailure)]
    got = objects(items)
    assert set(got) == {"1", "3"}
    assert got["1"].attributes == {"id": ["1"], "login": ["user1"], "title": ["Manager"]}
    assert got["1"].object_type == "person" and got["1"].dn is None
    t, _partition, offset = parse_locator(got["1"].locator or "")
    assert t == topic and offset >= 1, "the locator points at the last record of the object"
    assert list(conn.full_import()) == items, "an unchanged topic imports identically"


def test_field_mapping_composite_anchor_object_type_and_dn(
    kafka_broker: EmbeddedBroker, topic: str, make: Make
) -> None:
    row = {
        "country": "NO",
        "emp_no": 7,
        "login": "smith, j",
        "kind": "employee",
        "job": {"title": "Engineer", "grade": None},
        "groups": ["staff", "oslo", "staff"],
        "salary": 100,
    }
    send(kafka_broker, topic, (as_json({"country": "NO", "emp_no": 7}), debezium("c", after=row)))
    conn = make(
        anchor=["country", "emp_no"],
        object_type_field="kind",
        attributes={"uid": "login", "title": "job.title", "groups": "groups", "grade": "job.grade"},
        dn_template="uid={login},ou={country},dc=example,dc=org",
    )
    (obj,) = objects(list(conn.full_import())).values()
    assert obj.anchor == "NO|7"
    assert obj.object_type == "employee"
    # Renamed and selected: salary is not mapped, grade is null (no value), duplicates dropped.
    assert obj.attributes == {"uid": ["smith, j"], "title": ["Engineer"], "groups": ["staff", "oslo"]}
    assert obj.dn == "uid=smith\\, j,ou=NO,dc=example,dc=org"


def test_plain_json_envelope_with_anchor_field_and_key(
    kafka_broker: EmbeddedBroker, topic: str, make: Make
) -> None:
    send(
        kafka_broker,
        topic,
        (b"E1", as_json({"employee_id": "E1", "name": "Ann"})),
        (b"E2", as_json({"employee_id": "E2", "name": "Bob"})),
        (b"E1", as_json({"employee_id": "E1", "name": "Ann B"})),
        (b"E2", None),
    )
    by_field = make(envelope="json", anchor="employee_id")
    got = objects(list(by_field.full_import()))
    assert {k: v.attributes["name"] for k, v in got.items()} == {"E1": ["Ann B"]}
    by_key = make(envelope="json", anchor_from_key=True)
    assert set(objects(list(by_key.full_import()))) == {"E1"}

    mark = by_key.current_watermark()
    send(kafka_broker, topic, (b'"E3"', as_json({"name": "Cid"})), (b"E1", None))
    items = list(by_key.delta_import(mark))
    assert [i.anchor for i in items if isinstance(i, ImportedObject)] == ["E3"]
    assert [i.anchor for i in items if isinstance(i, DeletedObject)] == ["E1"]


# ====================================================================== end detection
def test_multi_record_batches_are_read_to_their_true_end(
    kafka_broker: EmbeddedBroker, topic: str, make: Make
) -> None:
    """A producer packing many records per batch: Tansu's ListOffsets reports the last batch's base
    offset + 1, so an end taken from it alone would drop most of each batch."""
    first = [(row_key(i), debezium("c", after=person(i)), 0) for i in range(25)]
    produce(kafka_broker.bootstrap, topic, first, batched=True)
    conn = make()
    mark = conn.current_watermark()
    assert mark == f"kafka1:{topic}:0=25,1=0,2=0"
    assert set(objects(list(conn.full_import()))) == {str(i) for i in range(25)}

    more = [(row_key(i), debezium("c", after=person(i)), i % 3) for i in range(100, 130)]
    produce(kafka_broker.bootstrap, topic, more, batched=True)
    items = list(conn.delta_import(mark))
    assert sorted(objects(items)) == sorted(str(i) for i in range(100, 130))
    last = items[-1]
    assert isinstance(last, Checkpoint) and last.watermark == f"kafka1:{topic}:0=35,1=10,2=10"
    assert last.watermark == conn.current_watermark()


# ====================================================================== delta import
def test_delta_import_from_a_watermark(kafka_broker: EmbeddedBroker, topic: str, make: Make) -> None:
    send(kafka_broker, topic, *[(row_key(i), debezium("c", after=person(i))) for i in range(1, 5)])
    conn = make()
    mark = conn.current_watermark()
    assert list(conn.delta_import(mark)) == [Checkpoint(mark)], "nothing new: a lone checkpoint"
    (only,) = list(conn.delta_import(None))
    assert only == Checkpoint(mark), "a delta without a watermark starts now"

    send(
        kafka_broker,
        topic,
        (row_key(1), debezium("u", before=person(1), after=person(1, title="Lead"))),
        (row_key(3), debezium("d", before=person(3))),
        (row_key(3), None),  # Debezium's tombstone after the delete: not a second delete
        (row_key(5), debezium("c", after=person(5))),
        (row_key(2), None),  # a tombstone alone: a delete
    )
    items = list(conn.delta_import(mark))
    assert isinstance(items[-1], Checkpoint)
    changed = objects(items)
    assert set(changed) == {"1", "5"}, "unchanged objects are not in a delta"
    assert changed["1"].attributes["title"] == ["Lead"]
    deletes = [i for i in items if isinstance(i, DeletedObject)]
    assert sorted(d.anchor or "" for d in deletes) == ["2", "3"]
    assert all(d.object_type == "person" and d.locator for d in deletes)
    assert list(conn.delta_import(items[-1].watermark)) == [items[-1]]

    # Every intermediate checkpoint covers exactly what came before it.
    for n, item in enumerate(items):
        if isinstance(item, Checkpoint):
            replay = [i for i in conn.delta_import(item.watermark) if not isinstance(i, Checkpoint)]
            assert replay == [i for i in items[n + 1 :] if not isinstance(i, Checkpoint)]


def test_watermarks_are_validated(kafka_broker: EmbeddedBroker, topic: str, make: Make) -> None:
    send(kafka_broker, topic, *[(row_key(i), debezium("c", after=person(i))) for i in range(6)])
    conn = make()
    mark = conn.current_watermark()
    for bad in [
        "",
        "garbage",
        "kafka1:other-topic:0=1",
        f"kafka1:{topic}:",
        f"kafka1:{topic}:0=1,0=2",
        f"kafka1:{topic}:0=-1",
        f"kafka1:{topic}:0=01",
        f"kafka1:{topic}:7=0",  # a partition the topic does not have
        f"kafka1:{topic}:0=999",  # beyond the end
    ]:
        with pytest.raises(CursorExpired):
            list(conn.delta_import(bad))
    # A partition missing from the watermark was added after it: read from its beginning.
    without_p1 = ",".join(p for p in mark.split(":")[2].split(",") if not p.startswith("1="))
    items = list(conn.delta_import(f"kafka1:{topic}:{without_p1}"))
    partitions = {parse_locator(i.locator or "")[1] for i in items if isinstance(i, ImportedObject)}
    assert partitions == {1}


# ====================================================================== malformed records
def test_malformed_records_are_import_failures(kafka_broker: EmbeddedBroker, topic: str, make: Make) -> None:
    send(kafka_broker, topic, (row_key(1), debezium("c", after=person(1))))
    conn = make()
    mark = conn.current_watermark()
    bad = [
        (row_key(1), b"not json {", "import-malformed-record"),  # after a good image of 1
        (row_key(2), b"[1, 2]", "import-malformed-record"),
        (row_key(3), b"\xff\xfe", "import-decode-error"),
        (row_key(4), as_json({"id": 4}), "import-malformed-record"),  # no op: not Debezium
        (row_key(5), debezium("u", before=person(5)), "import-malformed-record"),  # no after
        (row_key(6), debezium("t"), "import-unsupported-op"),
        (row_key(7), debezium("c", after={"login": "x"}), "import-missing-anchor"),
        (None, debezium("d", before={"login": "x"}), "import-missing-anchor"),
        (row_key(8), b'{"op": "c", "after": {"a": 1, "a.b": 2, "a": {"b": 3}}}', "import-attribute-clash"),
    ]
    send(kafka_broker, topic, *[(k, v) for k, v, _ in bad])
    send(kafka_broker, topic, (row_key(9), debezium("c", after=person(9))))

    for items in (list(conn.full_import()), list(conn.delta_import(mark))):
        failures = [i for i in items if isinstance(i, ImportFailure)]
        assert sorted(f.error_type for f in failures) == sorted(t for _k, _v, t in bad)
        for f in failures:
            t, _p, offset = parse_locator(f.locator)
            assert t == topic and offset >= 0 and f.locator in f.message
        assert "9" in objects(items), "the import goes on after bad records"
    full = objects(list(conn.full_import()))
    assert full["1"].attributes["title"] == ["Engineer"], "a malformed record never removes an object"


# ====================================================================== follow
def test_follow_streams_changes_stops_and_resumes(
    kafka_broker: EmbeddedBroker, topic: str, make: Make
) -> None:
    conn = make()
    stop = threading.Event()
    got: queue.Queue[base.DeltaItem] = queue.Queue()
    errors: list[BaseException] = []

    def run(mark: str | None) -> None:
        try:
            for item in conn.follow(mark, stop):
                got.put(item)
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)

    def take_until(anchors: set[str]) -> tuple[list[base.DeltaItem], str]:
        items: list[base.DeltaItem] = []
        while anchors - {i.anchor for i in items if isinstance(i, ImportedObject | DeletedObject)}:
            item = got.get(timeout=60)
            items.append(item)
        while not got.empty() or not isinstance(items[-1], Checkpoint):
            items.append(got.get(timeout=60))
        mark = next(i.watermark for i in reversed(items) if isinstance(i, Checkpoint))
        return items, mark

    worker = threading.Thread(target=run, args=(None,))
    worker.start()
    first = got.get(timeout=60)
    assert isinstance(first, Checkpoint), "follow from now starts with the current position"
    send(
        kafka_broker,
        topic,
        (row_key(1), debezium("c", after=person(1))),
        (row_key(2), debezium("c", after=person(2))),
    )
    items, mark = take_until({"1", "2"})
    assert sorted(i.anchor for i in items if isinstance(i, ImportedObject)) == ["1", "2"]
    stop.set()
    worker.join(30)
    assert not worker.is_alive(), "follow returns once stop is set"
    assert not errors

    # While stopped: a change and a delete. Resumed from the last checkpoint: each seen exactly once.
    send(
        kafka_broker,
        topic,
        (row_key(1), debezium("u", before=person(1), after=person(1, title="Lead"))),
        (row_key(2), debezium("d", before=person(2))),
        (row_key(2), None),
    )
    stop.clear()
    worker = threading.Thread(target=run, args=(mark,))
    worker.start()
    resumed, _mark = take_until({"1", "2"})
    stop.set()
    worker.join(30)
    assert not worker.is_alive() and not errors
    changes = [i for i in resumed if isinstance(i, ImportedObject | DeletedObject)]
    # Partitions interleave freely; each change exactly once (the tombstone after the 'd' is no delete).
    assert sorted((type(i).__name__, i.anchor) for i in changes) == [
        ("DeletedObject", "2"),
        ("ImportedObject", "1"),
    ]
    updated = next(i for i in changes if isinstance(i, ImportedObject))
    assert updated.attributes["title"] == ["Lead"]


# ====================================================================== connection, config
def test_connection_check_and_capabilities(make: Make) -> None:
    conn = make()
    conn.test_connection()
    assert set(base.capabilities(conn)) == {"full-import", "delta-import", "follow", "test-connection"}
    kind = registry.load()["kafka"]
    assert kind.config_model is KafkaConnectorConfig and kind.factory is KafkaConnector


def test_unreachable_broker_is_no_start_connection_without_the_secret() -> None:
    config = KafkaConnectorConfig(
        kind="kafka",
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        topic="hr",
        anchor="id",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        username="idsync",
        password="s3cret-pw",  # type: ignore[arg-type]
        request_timeout_s=5,
    )
    conn = KafkaConnector("hr", config)
    try:
        for call in (conn.test_connection, conn.current_watermark, lambda: list(conn.full_import())):
            with pytest.raises(RetriableError) as err:
                call()
            assert err.value.error_type == "no-start-connection"
            assert "127.0.0.1" in str(err.value) and "s3cret-pw" not in str(err.value)
    finally:
        conn.close()
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in config.model_dump_json()


def test_missing_topic_is_fatal_and_never_created(kafka_broker: EmbeddedBroker, make: Make) -> None:
    conn = make(topic="no-such-topic")
    with pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-topic" and "no-such-topic" in str(err.value)
    with pytest.raises(FatalError):
        conn.test_connection()  # still missing: the first check did not auto-create it


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"topic": "bad topic"}, "not a Kafka topic name"),
        ({"bootstrap_servers": "127.0.0.1"}, "is not host:port"),
        ({"anchor": []}, "exactly one of anchor"),
        ({"anchor_from_key": True}, "exactly one of anchor"),
        ({"dn_template": "ou=people"}, "names no {field}"),
        ({"attributes": {}}, "map at least one attribute"),
        ({"security_protocol": "SASL_SSL", "username": "u", "password": "s3cret-pw"}, "needs sasl_mechanism"),
        ({"password": "s3cret-pw"}, "need security_protocol SASL_"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {
        "kind": "kafka",
        "bootstrap_servers": "127.0.0.1:9092",
        "topic": "hr",
        "anchor": "id",
    }
    data.update(fields)
    with pytest.raises(ValidationError) as err:
        KafkaConnectorConfig.model_validate(data)
    assert message in str(err.value) and "s3cret-pw" not in str(err.value)


def test_bootstrap_servers_accept_a_comma_separated_string() -> None:
    config = KafkaConnectorConfig(
        kind="kafka",
        bootstrap_servers="127.0.0.1:9092, 127.0.0.1:9093",  # type: ignore[arg-type]
        topic="hr",
        anchor="id",
    )
    assert config.bootstrap_servers == ["127.0.0.1:9092", "127.0.0.1:9093"]
