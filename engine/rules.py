"""Rules compiled once from the configuration into lookups the hot path can use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.precedence import Contributor
from schemas.config import (
    DeletionRuleConfig,
    IdsyncConfig,
    InboundRuleConfig,
    Normalizer,
    OutboundRuleConfig,
)
from schemas.expressions import compile_expression

#: A mapping group as the metaverse sees it: (metaverse attribute, normalization) per criterion.
JoinSignature = tuple[tuple[str, tuple[Normalizer, ...]], ...]

#: A join resolver hook: (connector-space object, candidates) -> chosen mv_id or None (see engine.join).
Resolver = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything a stage needs from the configuration, indexed."""

    config: IdsyncConfig
    inbound: dict[tuple[str, str], InboundRuleConfig]
    contributors: dict[str, dict[str, Contributor]]
    deletion: dict[str, DeletionRuleConfig]
    outbound: dict[str, list[OutboundRuleConfig]]
    targets: frozenset[str]
    #: Per metaverse type: attributes with equal precedence.
    equal: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Per metaverse type: attributes whose values stay when their connector disconnects (no recall).
    no_recall: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Per metaverse type: attributes declared single-valued.
    single_valued: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Join resolver hooks (already loaded by the configuration), per (connector, object type).
    resolvers: dict[tuple[str, str], Resolver] = field(default_factory=dict)
    #: Per metaverse type: every mapping group of the inbound rules into it (the metaverse step registers
    #: each object in the join index by the routes its attribute values give).
    join_signatures: dict[str, tuple[JoinSignature, ...]] = field(default_factory=dict)
    #: Metaverse types with a resolver somewhere: the join index keeps their candidates' attributes fresh.
    snapshot_types: frozenset[str] = frozenset()

    def inbound_rule(self, connector: str, object_type: str) -> InboundRuleConfig | None:
        return self.inbound.get((connector, object_type))

    def resolver(self, connector: str, object_type: str | None) -> Resolver | None:
        return self.resolvers.get((connector, object_type or ""))


def signature(rule: InboundRuleConfig, group_index: int) -> JoinSignature:
    return tuple((c.mv, tuple(c.normalize)) for c in rule.mapping_groups()[group_index])


def compile_rules(config: IdsyncConfig) -> Rules:
    """Index the configuration for the stages (expressions compiled, hooks already loaded)."""
    contributors: dict[str, dict[str, Contributor]] = {}
    signatures: dict[str, list[JoinSignature]] = {}
    resolvers: dict[tuple[str, str], Resolver] = {}
    for rule in config.inbound:
        initial = frozenset(f.mv for f in rule.flows if f.initial_only)
        authoritative = frozenset(f.mv for f in rule.flows if f.authoritative_null)
        contributors.setdefault(rule.mv_type, {})[rule.connector] = Contributor(
            rule.precedence, initial, authoritative
        )
        sigs = signatures.setdefault(rule.mv_type, [])
        for i in range(len(rule.mapping_groups())):
            sig = signature(rule, i)
            if sig not in sigs:
                sigs.append(sig)
        if rule.resolver is not None:
            resolvers[(rule.connector, rule.object_type)] = config.hook(rule.resolver)
        for f in rule.flows:
            if f.expression is not None:
                compile_expression(f.expression)  # warm the cache: the first object pays nothing
    for out in config.outbound:
        for ef in out.flows:
            if ef.expression is not None:
                compile_expression(ef.expression)
    types = config.metaverse
    return Rules(
        config=config,
        inbound={(r.connector, r.object_type): r for r in config.inbound},
        contributors=contributors,
        deletion={name: t.deletion for name, t in types.items()},
        outbound={name: config.outbound_rules(name) for name in types},
        targets=frozenset(config.export_targets()),
        equal={
            n: frozenset(a for a, c in t.attributes.items() if c.precedence == "equal")
            for n, t in types.items()
        },
        no_recall={
            n: frozenset(a for a, c in t.attributes.items() if not c.recall) for n, t in types.items()
        },
        single_valued={
            n: frozenset(a for a, c in t.attributes.items() if not c.multi_valued) for n, t in types.items()
        },
        resolvers=resolvers,
        join_signatures={n: tuple(s) for n, s in signatures.items()},
        snapshot_types=frozenset(r.mv_type for r in config.inbound if r.resolver is not None),
    )
