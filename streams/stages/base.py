"""The batched stage: one call per micro-batch instead of per event.

For each batch: group events by partition, multi-get their state, call the engine per event (an
exception dead-letters that event, never the batch), then produce all outputs and wait for the broker,
and keep the state changes as the partition's unsaved state (later batches read it). A checkpoint —
every ``pipeline.checkpoint_interval_ms``, when the stage goes idle, before a revocation — writes the
unsaved state to the store's changelog and waits, then writes it locally in one WriteBatch per
partition; only then does the consumer commit the input offsets. Outputs go out before any record of the
new state, and the changelog before the local copy: after a crash the batches since the last checkpoint
are re-delivered against the saved state and recompute the same outputs, which every downstream step
treats idempotently (invariant 5), and the changelog never lacks a write the local copy has, so another
worker can take the partition over from the changelog (invariant 11).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import traceback
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, Generic, TypeVar

import msgspec
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rocksdict import RdictIter

from engine.chunks import Touched
from schemas.codec import unpacker
from schemas.errors import DataError
from schemas.state import values_held
from schemas.wire import ErrorRecord
from streams.output import Outputs
from streams.runtime import Runtime, now_ms
from streams.store import PartitionStore

log = logging.getLogger("idsync.stage")

S = TypeVar("S", bound=msgspec.Struct)


class Batch:
    """State of one partition during one batch: decoded lazily, encoded once at the end.

    ``get`` returns the batch's current value of a key (the engine never mutates what it is given);
    ``put`` replaces it. A key written several times in a batch (a group hearing from many members) is
    encoded, logged and written once."""

    def __init__(self, store: PartitionStore, keys: list[bytes], model: type[msgspec.Struct]) -> None:
        self._store = store
        self._decoder = unpacker(model)
        #: Written by earlier batches, not saved yet: read from there, decoded already.
        self._unsaved = store.unsaved
        keys = [k for k in keys if k not in self._unsaved]
        raw = store.get_many(keys)
        self._raw: dict[bytes, bytes | None] = dict(zip(keys, raw, strict=True))
        self._cache: dict[bytes, Any] = {}
        self._puts: dict[bytes, Any] = {}
        #: The keys of ``_puts``, sorted (for ``scan``).
        self._put_keys: list[bytes] = []
        #: Where the store's codec holds objects in parts: per key put, what changed in its large
        #: containers since it was read from the database (``engine.chunks.Touched``; None: unknown).
        self._touched: dict[bytes, Touched | None] = {}

    def sibling(self, keys: list[bytes], model: type[msgspec.Struct]) -> Batch:
        """A batch of the same partition for keys of another kind (``model``), read with one multi-get of
        ``keys``; the stage stashes it with this one."""
        return Batch(self._store, keys, model)

    @property
    def partition(self) -> int:
        """The partition this batch's state (and the records it came from) belongs to."""
        return self._store.partition

    def get(self, key: bytes) -> Any:
        if key in self._cache:
            return self._cache[key]
        if key in self._unsaved:
            value = self._cache[key] = self._unsaved[key]
            return value
        raw = self._raw.get(key) if key in self._raw else self._store.get(key)
        value = None if raw is None else self._decode(key, raw)
        self._cache[key] = value
        return value

    def _decode(self, key: bytes, raw: bytes) -> Any:
        """A stored value as the stage sees it (whole, where the store's codec keeps it in parts)."""
        value = self._decoder.decode(raw)
        codec = self._store.codec
        return value if codec is None else codec.loaded(self._store, key, value)

    def stash(self) -> None:
        """Keep this batch's changes in the partition's unsaved state (after its outputs were acked): the
        stage's next checkpoint (``save``) saves them with those of the other batches since the last one."""
        self._store.stash(self._puts, self._put_keys, values_held)
        if self._touched:
            journal = self._store.touched
            for key, touched in self._touched.items():
                if touched is None:
                    journal.pop(key, None)
                else:
                    journal[key] = touched

    def update(
        self, key: bytes, value: msgspec.Struct | None, touched: Touched | None = None, changed: bool = False
    ) -> None:
        """``put`` unless the key already holds an equal value (no write, no changelog record: a
        reference registration or a message that changed nothing). ``changed``: the caller knows the value
        differs though the two may compare equal — steps that changed maps in place which the value read
        shares (``engine.shared``)."""
        if changed or self.get(key) != value:
            self.put(key, value, touched)

    def put(self, key: bytes, value: msgspec.Struct | None, touched: Touched | None = None) -> None:
        """Replace the key's value. ``touched``: what changed in its large containers from the value this
        batch read (``engine.chunks.Touched``, for a store whose codec holds them in parts; None:
        unknown — the codec compares the value with its parts)."""
        if self._store.codec is not None:
            if key in self._touched:
                base = self._touched[key]
            elif key in self._unsaved:
                base = self._store.touched.get(key)
            elif key in self._cache:
                base = Touched()  # read from the database by this batch: nothing changed yet
            else:
                base = None
            self._touched[key] = None if base is None or touched is None else base.merged(touched)
        self._cache[key] = value
        if key not in self._puts:
            bisect.insort(self._put_keys, key)
        self._puts[key] = value

    def iterator(self) -> RdictIter:
        """A store iterator for several ``scan``s in a row (``PartitionStore.iterator``). Drop it when they
        are done: a live iterator keeps the partition's database open, and a released partition could
        not be opened again."""
        return self._store.iterator()

    def scan(
        self, prefix: bytes, head: type[msgspec.Struct] | None = None, it: RdictIter | None = None
    ) -> list[tuple[bytes, Any]]:
        """Every stored object under a prefix, with this batch's changes applied.

        ``head``: a struct with some of the state's fields, to decode stored objects into (cheaper when a
        scan only looks at a few fields); objects this batch changed come whole. ``it``: an ``iterator``
        to seek with instead of a new one."""
        seen: dict[bytes, Any] = {}
        decoder = unpacker(head) if head is not None else None
        unsaved = self._unsaved
        cache = self._cache
        for k, raw in self._store.scan(prefix, it):
            if k in cache or k in unsaved:
                seen[k] = self.get(k)
            elif decoder is not None:
                seen[k] = decoder.decode(raw)
            else:
                # Decoded from what the scan read (``get`` would read the key again).
                seen[k] = cache[k] = self._decode(k, raw)
        for k in self._store.unsaved_under(prefix) if unsaved else ():
            seen[k] = self.get(k)
        # Only what this batch wrote can differ from the store: its keys are kept sorted, so a scan does
        # not walk every key the batch touched (a reference index lists a DN's referrers this way).
        keys = self._put_keys
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            seen[keys[i]] = self._puts[keys[i]]
            i += 1
        return [(k, v) for k, v in sorted(seen.items()) if v is not None]


class Stage(ABC, Generic[S]):
    """A keyed, stateful, batched stage."""

    step_id: str
    store_name: str
    state_model: type[S]

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = rt.store(self.store_name)

    @abstractmethod
    def decode(self, topic: str, value: bytes) -> Any:
        """Decode one event's value (raise on a malformed record: it is dead-lettered)."""

    @abstractmethod
    def keys(self, topic: str, msg: Any) -> list[bytes]:
        """State keys a decoded event needs (for the batch multi-get)."""

    @abstractmethod
    def handle(self, batch: Batch, topic: str, msg: Any, out: Outputs) -> None:
        """Process one event: read and write state through ``batch``, add outputs to ``out``."""

    def handle_all(self, batch: Batch, items: list[tuple[Any, Any]], out: Outputs) -> None:
        """Process one partition's events in order (``(event, decoded)`` pairs); an event whose handling
        raises is dead-lettered and changes nothing. A stage may handle several events of one key at
        once, as long as it gives what handling them one by one gives."""
        for ev, decoded in items:
            try:
                self.handle(batch, ev.message.topic, decoded, out)
            except Exception as exc:
                self._dead_letter(ev, out, exc)

    async def process(self, events: list[Any]) -> None:
        """Process a batch of faust events (called from the agent; never raises on bad data)."""
        out = await self.rt.outputs()
        by_part: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
        for ev in events:
            try:
                decoded = self.decode(ev.message.topic, ev.value)
            except Exception as exc:
                self._dead_letter(ev, out, exc)
                continue
            by_part[ev.message.partition].append((ev, decoded))
        batches: list[Batch] = []
        for partition, items in by_part.items():
            keys = [k for ev, decoded in items for k in self.keys(ev.message.topic, decoded)]
            batch = Batch(self.store.partition(partition), list(dict.fromkeys(keys)), self.state_model)
            self.handle_all(batch, items, out)
            batches.append(batch)
        await self.commit(batches, out)
        for ev in events:
            self.rt.counters.consumed[ev.message.topic] += 1
        self.rt.counters.last_activity = asyncio.get_running_loop().time()

    async def assigned(self, partitions: list[int], seeded: list[int]) -> None:
        """Partitions were given to this worker and their state restored (``seeded``: those whose
        changelog the broker had lost, written again from the local copy) — before any of their records
        is processed."""

    def _dead_letter(self, ev: Any, out: Outputs, exc: Exception) -> None:
        msg = ev.message
        data_error = isinstance(exc, DataError | ValidationError | ValueError)
        error_type = (
            exc.error_type if isinstance(exc, DataError) else "data-error" if data_error else "engine-error"
        )
        raw = ev.value if isinstance(ev.value, bytes | bytearray) else b""
        text = record_text(bytes(raw))
        # A malformed record needs no stack trace; an engine failure does (MIM shows both).
        detail = None if data_error else traceback.format_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, ValidationError):
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        self.rt.record_error(
            ErrorRecord(
                step_id=self.step_id,
                error_type=getattr(exc, "error_type", error_type)
                if isinstance(exc, DataError)
                else error_type,
                algorithm_step=self.step_id.split(".")[0],
                message=f"bad record at {msg.topic}[{msg.partition}]@{msg.offset}: {message}",
                detail=detail,
                record=text,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                ts_ms=now_ms(),
            ),
            out,
        )

    async def commit(self, batches: list[Batch], out: Outputs) -> None:
        """Produce the outputs and wait for the broker; then keep the batches' state changes as unsaved
        state, which the next ``checkpoint`` saves.

        The order is what makes a crash harmless: a state change is never on record (changelog or local
        copy) before the outputs it caused are acknowledged. Were both sent together, a crash mid-flush
        could leave the new state in the changelog without its outputs; the worker taking the partition
        over would restore that state, re-process the batch, find nothing changed and publish nothing —
        the outputs would be lost for good."""
        await flush(out, self.step_id)
        for batch in batches:
            batch.stash()

    def idle(self, quiet_s: float) -> bool:
        """One piece of the work the stage does between fetches that brought nothing, its state saved
        (``quiet_s``: since its last batch): the store's large objects read back whole (``Store.warm``).
        Whether any is left."""
        return self.store.warm()

    def unsaved(self) -> tuple[int, int]:
        """State keys written since the last checkpoint, and the attribute values they hold
        (``schemas.state.values_held``)."""
        return self.store.unsaved(), self.store.unsaved_weight()

    async def checkpoint(self) -> None:
        """Save the state of every batch processed since the last checkpoint: to the changelog, wait for
        the broker, then to the local copy in one WriteBatch per partition with the changelog offset.

        The stage's consumer commits its input offsets only after a checkpoint (streams.consumer): after
        a crash, the batches since the last one are delivered again and recompute their outputs from the
        saved state (duplicates, which every step treats idempotently). A key written by many batches
        between two checkpoints (a large group, a hot reference-index entry) is encoded, logged and
        written once — as Kafka Streams' record cache does between two commits."""
        await save(self.rt, self.store.opened(), self.step_id)


async def save(rt: Runtime, parts: list[PartitionStore], step_id: str) -> None:
    """Save the unsaved state of ``parts`` (a checkpoint): each key encoded once and produced to its
    store's changelog partition; once the broker has acknowledged all of it, written locally in one
    WriteBatch per partition together with the changelog offset after it."""
    parts = [part for part in parts if part.unsaved]
    if not parts:
        return
    out = await rt.outputs()
    encoded: list[tuple[PartitionStore, dict[bytes, bytes | None]]] = []
    for part in parts:
        puts = part.encode_unsaved()
        if part.changelog is not None:
            for k, v in puts.items():
                out.add(part.changelog, k, v, partition=part.partition)
        encoded.append((part, puts))
    offsets = await flush(out, step_id)
    for part, puts in encoded:
        end = None if part.changelog is None else offsets.get((part.changelog, part.partition))
        part.write(puts, end)
        part.saved()


async def flush(out: Outputs, step_id: str) -> dict[tuple[str, int], int]:
    """Produce ``out`` and wait for every acknowledgement; while the broker is unreachable, keep the
    records (not acked) and retry with backoff — outputs are never dropped."""
    delay = 0.2
    while True:
        try:
            return await out.flush()
        except KafkaError as exc:
            log.warning("%s: producing failed (%s), retrying in %.1fs", step_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def record_text(raw: bytes, limit: int = 2000) -> str:
    """A dead-lettered record as text for the error record: JSON as it is, an internal MessagePack
    message as JSON, anything else as a Python bytes literal."""
    try:
        return raw[:limit].decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return msgspec.json.encode(msgspec.msgpack.decode(raw)).decode()[:limit]
    except (msgspec.DecodeError, TypeError, UnicodeDecodeError):
        return repr(raw[:limit])


__all__ = ["Batch", "Stage", "flush", "record_text", "save"]
