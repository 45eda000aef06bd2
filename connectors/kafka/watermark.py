"""The delta watermark: the next offset to read in each partition of the topic, as compact text.

``kafka1:<topic>:0=120,1=98,2=0`` means: partition 0 has been read up to offset 119, partition 1 up to 97,
partition 2 not at all. A resumed delta starts at exactly those offsets (resume starts after the last
record read; nothing before it is read again). The topic is part of the text so that a watermark taken on
another topic is refused instead of silently applied.
"""

from __future__ import annotations

import re

from connectors.base import CursorExpired

PREFIX = "kafka1"
_PART = re.compile(r"^(0|[1-9][0-9]{0,9})=(0|[1-9][0-9]{0,18})$")


def dump(topic: str, offsets: dict[int, int]) -> str:
    parts = ",".join(f"{p}={o}" for p, o in sorted(offsets.items()))
    return f"{PREFIX}:{topic}:{parts}"


def load(text: str, topic: str) -> dict[int, int]:
    """Partition -> next offset; ``CursorExpired`` when the text is not a watermark of ``topic``.

    An unreadable watermark expires the cursor (the runtime runs a full refresh) rather than failing:
    the topic itself is fine, only the position is lost.
    """
    head, _, rest = text.partition(":")
    name, _, parts = rest.partition(":")
    if head != PREFIX or not name or not parts:
        raise CursorExpired(
            f"The stored Kafka watermark {text[:80]!r} is not of the form {PREFIX}:<topic>:p=o,..."
        )
    if name != topic:
        raise CursorExpired(
            f"The stored Kafka watermark is for topic {name!r}, the connector reads {topic!r}"
        )
    offsets: dict[int, int] = {}
    for part in parts.split(","):
        m = _PART.match(part)
        if m is None:
            raise CursorExpired(f"The stored Kafka watermark has a malformed position {part[:40]!r}")
        partition, offset = int(m.group(1)), int(m.group(2))
        if partition in offsets:
            raise CursorExpired(f"The stored Kafka watermark names partition {partition} twice")
        offsets[partition] = offset
    return offsets
