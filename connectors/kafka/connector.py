"""The Kafka topic connector: full import, delta import and follow of an external topic, connection check.

- full import: every partition from its first offset to its current end, folded to the latest image per
  anchor (a Debezium ``d`` or a tombstone removes it); the objects come out in the order of their last
  record (partition, offset), so two imports of an unchanged topic are identical.
- delta import: from the watermark to the current end: ``ImportedObject`` for c/u/r (and plain objects),
  ``DeletedObject`` for d and tombstones (a tombstone right after its ``d`` is not reported twice), a
  ``Checkpoint`` after every fetch and at the end.
- follow: the same without an end, blocking on the broker's long-poll fetch; returns within about half a
  second of ``stop`` being set.

A record that cannot be read is an ``ImportFailure`` located by ``topic/partition@offset``; a malformed
record never removes an object (only a delete or a tombstone does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeAlias, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka import errors as kerr

from connectors.base import (
    Checkpoint,
    ConnectorKind,
    CursorExpired,
    DeletedObject,
    DeltaItem,
    ImportedObject,
    ImportFailure,
)
from connectors.kafka import watermark
from connectors.kafka.client import LoopThread, Reader, map_error
from connectors.kafka.config import KafkaConnectorConfig
from connectors.kafka.mapping import Bad, Mapper, Upsert, raw_text
from schemas.errors import IdsyncError, RetriableError

T = TypeVar("T")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"

#: How long one follow fetch waits for records: the bound on noticing ``stop``.
FOLLOW_WAIT_MS = 500
_DELTA_WAIT_MS = 200


class KafkaConnector:
    """Connector, FullImport, DeltaImport, Follow and ConnectionCheck on one topic."""

    def __init__(self, name: str, config: KafkaConnectorConfig) -> None:
        self.name = name
        self.config = config
        self._mapper = Mapper(config)
        self._loop = LoopThread(f"idsync-kafka-{name}")
        self._readers: set[Reader] = set()

    def close(self) -> None:
        """Stops readers left open by an abandoned import, then the loop thread."""
        if self._loop.running:
            for reader in list(self._readers):
                self._loop.run(reader.close())
        self._readers.clear()
        self._loop.close()

    # ================================================================== plumbing
    def _call(self, coro: Coroutine[Any, Any, T], *, starting: bool = False) -> T:
        try:
            return self._loop.run(coro)
        except IdsyncError:
            raise
        except kerr.OffsetOutOfRangeError as exc:
            raise CursorExpired(
                f"{self.config.display()}: records were deleted (retention) before they were read: {exc}"
            ) from None
        except (kerr.KafkaError, OSError, TimeoutError) as exc:
            raise map_error(exc, self.config, starting=starting) from None

    def _open(self) -> Reader:
        reader = Reader(self.config)
        self._readers.add(reader)
        try:
            self._call(reader.open(), starting=True)
        except BaseException:
            self._release(reader)
            raise
        return reader

    def _release(self, reader: Reader) -> None:
        self._readers.discard(reader)
        if self._loop.running:
            self._loop.run(reader.close())

    def _locator(self, record: Record) -> str:
        return f"{record.topic}/{record.partition}@{record.offset}"

    # ================================================================== capabilities
    def test_connection(self) -> None:
        """Connects, finds the topic (never creating it) and reads the end of every partition."""
        reader = self._open()
        try:
            self._call(reader.bounds(), starting=True)
        finally:
            self._release(reader)

    def current_watermark(self) -> str:
        """The current end of every partition: a delta from it sees only what is produced later."""
        reader = self._open()
        try:
            bounds = self._call(reader.bounds(), starting=True)
        finally:
            self._release(reader)
        return watermark.dump(self.config.topic, {tp.partition: end for tp, (_b, end) in bounds.items()})

    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        reader = self._open()
        try:
            bounds = self._call(reader.bounds(), starting=True)
            starts = {tp: begin for tp, (begin, _e) in bounds.items()}
            ends = {tp: end for tp, (_b, end) in bounds.items()}
            latest: dict[str, tuple[int, int, ImportedObject]] = {}
            # The anchor each record key last held: a tombstone names only the key (Debezium's row key,
            # which need not hold the anchor fields).
            anchor_of: dict[tuple[int, bytes], str] = {}
            try:
                for records in self._scan(reader, starts, ends, None):
                    for record in records:
                        slot = (record.partition, record.key) if record.key is not None else None
                        if record.value is None:
                            # A tombstone of a key never seen, or already deleted: nothing to remove.
                            if slot is not None and slot in anchor_of:
                                latest.pop(anchor_of.pop(slot), None)
                            continue
                        item = self._item(record)
                        if isinstance(item, ImportFailure):
                            yield item
                        elif isinstance(item, ImportedObject):
                            if slot is not None:
                                previous = anchor_of.get(slot)
                                if previous is not None and previous != item.anchor:
                                    latest.pop(previous, None)  # the row now carries another anchor
                                anchor_of[slot] = item.anchor
                            latest[item.anchor] = (record.partition, record.offset, item)
                        elif item.anchor is not None:
                            latest.pop(item.anchor, None)
                            if slot is not None:
                                anchor_of.pop(slot, None)
            except CursorExpired as exc:
                # The log start moved past the read position while reading: the snapshot is incomplete.
                raise RetriableError(
                    f"{exc.message}; run the full import again", error_type="cd-connection-failure"
                ) from None
        finally:
            self._release(reader)
        for _p, _o, obj in sorted(latest.values(), key=lambda t: (t[0], t[1])):
            yield obj

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]:
        return self._changes(watermark, None)

    def follow(self, watermark: str | None, stop: threading.Event) -> Iterator[DeltaItem]:
        return self._changes(watermark, stop)

    # ================================================================== reading
    def _changes(self, mark: str | None, stop: threading.Event | None) -> Iterator[DeltaItem]:
        reader = self._open()
        try:
            bounds = self._call(reader.bounds(), starting=True)
            if mark is None:
                starts = {tp: end for tp, (_b, end) in bounds.items()}
            else:
                starts = self._starts(watermark.load(mark, self.config.topic), bounds)
            ends = None if stop is not None else {tp: end for tp, (_b, end) in bounds.items()}
            nexts = {tp.partition: offset for tp, offset in starts.items()}
            if stop is not None:
                yield Checkpoint(watermark.dump(self.config.topic, nexts))
            after_delete: dict[int, bytes] = {}
            last = ""
            for records in self._scan(reader, starts, ends, stop):
                for record in records:
                    item = self._delta_item(record, after_delete)
                    if item is not None:
                        yield item
                    nexts[record.partition] = record.offset + 1
                if records:
                    last = watermark.dump(self.config.topic, nexts)
                    yield Checkpoint(last)
            if ends is not None:
                # Every partition was read to its end (a position past the last record read means the
                # offsets between hold no record for us: control records, compacted gaps).
                nexts = {tp.partition: max(nexts[tp.partition], end) for tp, end in ends.items()}
                final = watermark.dump(self.config.topic, nexts)
                if final != last:
                    yield Checkpoint(final)
        finally:
            self._release(reader)

    def _starts(
        self, saved: dict[int, int], bounds: dict[TopicPartition, tuple[int, int]]
    ) -> dict[TopicPartition, int]:
        """Where a resumed read starts; ``CursorExpired`` when the saved position cannot be continued."""
        topic = self.config.topic
        known = {tp.partition for tp in bounds}
        gone = sorted(set(saved) - known)
        if gone:
            raise CursorExpired(
                f"The watermark names partitions {gone} that topic {topic!r} does not have "
                "(was it recreated?)"
            )
        starts: dict[TopicPartition, int] = {}
        for tp, (begin, end) in bounds.items():
            # A partition added since the watermark was taken holds only new records: read it all.
            offset = saved.get(tp.partition, begin)
            if offset < begin:
                raise CursorExpired(
                    f"Topic {topic!r} partition {tp.partition}: records {offset}..{begin - 1} were deleted "
                    "(retention) before they were read"
                )
            if offset > end:
                raise CursorExpired(
                    f"Topic {topic!r} partition {tp.partition}: the watermark is at offset {offset}, "
                    f"beyond the end {end} (was the topic recreated?)"
                )
            starts[tp] = offset
        return starts

    def _scan(
        self,
        reader: Reader,
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int] | None,
        stop: threading.Event | None,
    ) -> Iterator[list[Record]]:
        """The records from ``starts`` up to ``ends`` (None: until ``stop``), one list per fetch."""
        self._call(reader.seek(starts))
        active = [tp for tp in starts if ends is None or starts[tp] < ends[tp]]
        wait_ms = FOLLOW_WAIT_MS if ends is None else _DELTA_WAIT_MS
        progress_at = time.monotonic()
        while active:
            if stop is not None and stop.is_set():
                return
            batches = self._call(reader.fetch(active, wait_ms))
            records: list[Record] = []
            for tp in active:
                for record in batches.get(tp, ()):
                    if ends is not None and record.offset >= ends[tp]:
                        break  # produced after the snapshot: the next delta reads it
                    records.append(record)
            if ends is not None:
                positions = self._call(reader.positions(active))
                done = {tp for tp in active if positions[tp] >= ends[tp]}
                if records or done:
                    progress_at = time.monotonic()
                elif time.monotonic() - progress_at > self.config.stall_timeout_s:
                    behind = {tp.partition: (positions[tp], ends[tp]) for tp in active}
                    raise RetriableError(
                        f"{self.config.display()}: no record arrived for "
                        f"{self.config.stall_timeout_s:.0f}s while partitions are behind their end "
                        f"(partition: (position, end)) {behind}",
                        error_type="cd-connection-failure",
                    )
                active = [tp for tp in active if tp not in done]
            if records or ends is None:
                yield records

    # ================================================================== records
    def _item(self, record: Record) -> ImportedObject | DeletedObject | ImportFailure:
        locator = self._locator(record)
        try:
            change = self._mapper.decode(record.key, record.value)
        except Bad as bad:
            return ImportFailure(locator, bad.error_type, f"{locator}: {bad.message}", raw_text(record.value))
        if isinstance(change, Upsert):
            return ImportedObject(change.anchor, change.object_type, change.attributes, change.dn, locator)
        return DeletedObject(change.anchor, change.object_type, change.dn, locator)

    def _delta_item(self, record: Record, after_delete: dict[int, bytes]) -> DeltaItem | None:
        """Debezium follows each ``d`` with a tombstone under the same key (for compaction): one delete."""
        if (
            record.value is None
            and record.key is not None
            and after_delete.get(record.partition) == record.key
        ):
            del after_delete[record.partition]
            return None
        item = self._item(record)
        if isinstance(item, DeletedObject) and record.value is not None and record.key is not None:
            after_delete[record.partition] = record.key
        else:
            after_delete.pop(record.partition, None)
        return item


KIND = ConnectorKind(
    KafkaConnectorConfig,
    KafkaConnector,
    "Kafka topic (Debezium change events or JSON objects): full import, delta import, follow",
)
