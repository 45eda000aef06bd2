"""Rules compiled once from the configuration into lookups the hot path can use."""

from __future__ import annotations

from dataclasses import dataclass

from engine.precedence import Contributor
from schemas.config import DeletionRuleConfig, IdsyncConfig, InboundRuleConfig, OutboundRuleConfig


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything a stage needs from the configuration, indexed."""

    config: IdsyncConfig
    inbound: dict[tuple[str, str], InboundRuleConfig]
    contributors: dict[str, dict[str, Contributor]]
    deletion: dict[str, DeletionRuleConfig]
    outbound: dict[str, list[OutboundRuleConfig]]
    targets: frozenset[str]

    def inbound_rule(self, connector: str, object_type: str) -> InboundRuleConfig | None:
        return self.inbound.get((connector, object_type))


def compile_rules(config: IdsyncConfig) -> Rules:
    """Index the configuration for the stages."""
    contributors: dict[str, dict[str, Contributor]] = {}
    for rule in config.inbound:
        initial = frozenset(f.mv for f in rule.flows if f.initial_only)
        contributors.setdefault(rule.mv_type, {})[rule.connector] = Contributor(rule.precedence, initial)
    return Rules(
        config=config,
        inbound={(r.connector, r.object_type): r for r in config.inbound},
        contributors=contributors,
        deletion={name: t.deletion for name, t in config.metaverse.items()},
        outbound={name: config.outbound_rules(name) for name in config.metaverse},
        targets=frozenset(config.export_targets()),
    )
