"""The compression level of the record batches idsync produces (``pipeline.compression_level``).

aiokafka's producer has no ``compression.level`` (Kafka's KIP-390 setting): its record-batch builders
call the codec's encoder at the encoder's default — zstd 3, lz4 9, gzip 9. ``set_level`` makes them call
it at another level. The builders are module-level code shared by every producer of the process (the
Cython ones when aiokafka's extension is built, the Python ones otherwise), so the level is the
process's; a worker process runs one configuration. Compressing runs in the event loop's thread: at
zstd 3, a 50,000-member group's 12 MB changelog record took 50 ms of it, at zstd 1 18 ms, 15% larger
(docs/benchmarks.md, twenty-second session).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

from aiokafka import codec

from schemas.errors import FatalError

#: Per codec: its encoder's name in ``aiokafka.codec`` and the name of the encoder's level argument.
_ENCODERS = {
    "zstd": ("zstd_encode", "level"),
    "lz4": ("lz4_encode", "level"),
    "gzip": ("gzip_encode", "compresslevel"),
}
#: The modules whose record-batch builders call the encoders (the Cython ones are optional).
_BUILDERS = (
    "aiokafka.record.default_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.legacy_records",
)


def _builders() -> list[ModuleType]:
    found = []
    for name in _BUILDERS:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def set_level(compression: str, level: int | None) -> None:
    """Make every record batch this process compresses with ``compression`` use ``level`` (None: the
    encoder's own default). Codecs without levels (snappy, none) are left as they are."""
    if compression not in _ENCODERS:
        return
    name, argument = _ENCODERS[compression]
    encoder: Callable[..., bytes] = getattr(codec, name)  # aiokafka's own: never replaced there
    if level is not None:
        encoder = functools.partial(encoder, **{argument: level})
    patched = 0
    for module in _builders():
        if name in vars(module):
            setattr(module, name, encoder)
            patched += 1
    if not patched:
        # An aiokafka whose builders no longer call the encoder by this name: a level would be ignored.
        raise FatalError(f"pipeline.compression_level: this aiokafka's record builders do not call {name}")


def level_in_use(compression: str) -> int | None:
    """The level the default record-batch builder compresses ``compression`` at (None: the encoder's
    default, or a codec without levels)."""
    if compression not in _ENCODERS:
        return None
    name, argument = _ENCODERS[compression]
    for module in _builders():
        encoder = vars(module).get(name)
        if isinstance(encoder, functools.partial):
            return int(encoder.keywords[argument])
    return None
