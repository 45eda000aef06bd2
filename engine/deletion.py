"""Metaverse object deletion rule: when does a metaverse object go away?"""

from __future__ import annotations

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
