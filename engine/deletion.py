"""Metaverse object deletion rule: when does a metaverse object go away?

With a grace period the object is only marked (``delete_due_ms``); it is deleted by the first event at or
after the due time (any message to it, or the metaverse stage's periodic ``due_deletions`` check), unless
a connector joins meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.config import DeletionRuleConfig
from schemas.state import MVObject


def should_delete(rule: DeletionRuleConfig, mv: MVObject, disconnected: str, targets: set[str]) -> bool:
    """After ``disconnected`` left ``mv``: delete it?

    ``last-connector`` ignores connectors that are only export targets of this object (otherwise a
    provisioned account would keep its metaverse object alive forever).
    """
    if rule.rule == "source-disconnects":
        return disconnected in rule.sources
    return not [c for c in mv.links if c not in targets]


def rescued_by(rule: DeletionRuleConfig, connector: str, targets: frozenset[str] | set[str]) -> bool:
    """Does ``connector`` joining the object cancel a deletion waiting for its grace period?"""
    if rule.rule == "source-disconnects":
        return connector in rule.sources
    return connector not in targets


def due_at(rule: DeletionRuleConfig, ts_ms: int) -> int | None:
    """When a deletion triggered at ``ts_ms`` falls due; None: at once (no grace period)."""
    return ts_ms + rule.grace_period_s * 1000 if rule.grace_period_s > 0 else None


def is_due(mv: MVObject, now_ms: int) -> bool:
    return not mv.deleted and mv.delete_due_ms is not None and mv.delete_due_ms <= now_ms


def due_deletions(objects: Iterable[MVObject | None], now_ms: int) -> list[str]:
    """mv_ids of the objects whose deletion has fallen due at ``now_ms``, in due order (then mv_id)."""
    due = [(mv.delete_due_ms or 0, mv.mv_id) for mv in objects if mv is not None and is_due(mv, now_ms)]
    return [mv_id for _due, mv_id in sorted(due)]
