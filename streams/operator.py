"""Operator decisions on connector-space objects: ``idsync join``, ``idsync disjoin``, ``idsync release``.

MIM's Joiner tool in the pipeline: the decision is an ``OperatorLink`` record on the links topic, keyed by
the object's anchor, so the staging step that owns the object meets it in order with the object's own
imports and join outcomes, whichever worker holds the partition. The result shows in the connector space
(the object's connector state) and, when it cannot be carried out (no such object, no inbound rule, a
metaverse object that does not exist or already has an object of that connector), as a per-object error.
"""

from __future__ import annotations

import getpass
import uuid

from schemas.codec import pack
from schemas.errors import ConfigError
from schemas.messages import OperatorLink
from streams.runtime import Runtime, now_ms


async def publish_operator_link(
    rt: Runtime, connector: str, anchor: str, action: str, mv_id: str | None = None
) -> OperatorLink:
    """Publish one decision; returns the record (its ``request_id`` names it in any error)."""
    if connector not in rt.config.connectors:
        known = ", ".join(sorted(rt.config.connectors))
        raise ConfigError(f"connector {connector!r} is not in the configuration (connectors: {known})")
    try:
        user: str | None = getpass.getuser()
    except Exception:
        user = None
    record = OperatorLink(
        request_id=uuid.uuid4().hex,
        connector=connector,
        anchor=anchor,
        action=action,  # type: ignore[arg-type]
        mv_id=mv_id,
        requested_by=user,
        ts_ms=now_ms(),
    )
    out = await rt.outputs()
    out.add(rt.names.links_topic(), anchor.encode(), pack(record))
    await out.flush()
    return record
