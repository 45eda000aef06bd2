"""Rules compiled once from the configuration into lookups the hot path can use."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.precedence import Contributor
from schemas.config import (
    DeletionRuleConfig,
    ExportFlowConfig,
    IdsyncConfig,
    InboundRuleConfig,
    Normalizer,
    OutboundRuleConfig,
    template_fields,
)
from schemas.expressions import compile_expression

#: A mapping group as the metaverse sees it: (metaverse attribute, normalization) per criterion.
JoinSignature = tuple[tuple[str, tuple[Normalizer, ...]], ...]

#: A join resolver hook: (connector-space object, candidates) -> chosen mv_id or None (see engine.join).
Resolver = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class ExportShape:
    """How an outbound rule's target attributes are exported, beyond their values."""

    #: Reference attributes its flows read (translated to the referenced objects' DNs in the target).
    references: frozenset[str] = frozenset()
    #: Target attributes exported value by value (add/delete), never replaced whole: direct flows from
    #: multi-valued metaverse attributes (a group's members).
    value_level: frozenset[str] = frozenset()
    #: Target attributes holding DNs (direct flows from reference attributes): compared as DNs.
    dn_valued: frozenset[str] = frozenset()


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
    #: Per metaverse type: reference attributes (they hold mv_ids).
    reference_attrs: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Per (connector, object type): its reference flows as (metaverse attribute, connector-space attribute).
    reference_flows: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: Per (connector, object type): the connector-space attributes of its reference flows (their values
    #: are DNs: a value-level change record's values match theirs as DNs).
    reference_sources: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    #: Per (connector, object type): the reference source attributes staging may hold value by value once
    #: they are large (``engine.staging.split_object``): each flows into a multi-valued metaverse
    #: attribute no other reference flow of the rule feeds, and nothing else of the rule reads it (no other
    #: flow, no filter), so a value-level change of it alone reaches the metaverse as its registrations
    #: (``engine.inbound.routes_by_value``). Never a target connector's: its imports carry whole images.
    split_sources: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    #: Connectors with reference flows: their objects' DNs are published in the reference index.
    reference_connectors: frozenset[str] = frozenset()
    #: Per (target connector, metaverse type): reference attributes its export flows read (translated to DNs).
    export_references: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    #: Per (target connector, metaverse type): how its target attributes are exported.
    export_shapes: dict[tuple[str, str], ExportShape] = field(default_factory=dict)
    #: Per metaverse type, beside ``outbound``: the metaverse attributes each outbound rule reads (scope,
    #: DN template, flows); None where an expression may read any. A change to none of them leaves what
    #: the rule wants unchanged.
    outbound_reads: dict[str, tuple[frozenset[str] | None, ...]] = field(default_factory=dict)
    #: Per metaverse type: the attributes its mapping groups join on (the join-index registration).
    join_attributes: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Target connectors that need the DNs of referenced objects, in name order.
    xref_targets: tuple[str, ...] = ()
    #: Per metaverse type, beside ``outbound``: the reference attributes each outbound rule exports value
    #: by value through one direct flow and reads nowhere else (not its scope, DN template or other
    #: flows), -> that flow's target attribute: a change of some of their values alone can be planned
    #: from the values that changed (``engine.membership``).
    member_exports: dict[str, tuple[dict[str, str], ...]] = field(default_factory=dict)
    #: Per metaverse type, beside ``outbound``: a digest of each outbound rule and its export shape.
    #: ``TargetState.settled_by`` holds it: a rule changed by a new configuration is planned whole again.
    rule_marks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def inbound_rule(self, connector: str, object_type: str) -> InboundRuleConfig | None:
        return self.inbound.get((connector, object_type))

    def resolver(self, connector: str, object_type: str | None) -> Resolver | None:
        return self.resolvers.get((connector, object_type or ""))

    def ref_flows(self, connector: str, object_type: str) -> tuple[tuple[str, str], ...]:
        return self.reference_flows.get((connector, object_type), ())

    def ref_sources(self, connector: str, object_type: str) -> frozenset[str]:
        return self.reference_sources.get((connector, object_type), frozenset())

    def splittable(self, connector: str, object_type: str) -> frozenset[str]:
        return self.split_sources.get((connector, object_type), frozenset())

    def export_shape(self, connector: str, mv_type: str) -> ExportShape:
        return self.export_shapes.get((connector, mv_type), _PLAIN)


_PLAIN = ExportShape()


def flow_reads(flow: ExportFlowConfig, attrs: Iterable[str]) -> set[str]:
    """Which of ``attrs`` an export flow reads (its source, a template field, ``mv.x`` in an expression)."""
    wanted = set(attrs)
    if flow.source is not None:
        return {flow.source} & wanted
    if flow.template is not None:
        return set(template_fields(flow.template)) & wanted
    if flow.expression is not None:
        expr = flow.expression
        return {a for a in wanted if re.search(rf"\bmv(_all)?\.{re.escape(a)}\b", expr)}
    return set()


_MV_NAME = re.compile(r"\bmv(?:_all)?\b")
_MV_ATTRIBUTE = re.compile(r"\bmv(?:_all)?\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


def rule_reads(rule: OutboundRuleConfig) -> frozenset[str] | None:
    """The metaverse attributes an outbound rule reads; None when an expression may read any (it uses
    ``mv``/``mv_all`` other than as ``mv.<attribute>``)."""
    reads: set[str] = {c.attribute for group in rule.scope for c in group}
    reads.update(template_fields(rule.dn))
    for f in rule.flows:
        if f.source is not None:
            reads.add(f.source)
        elif f.template is not None:
            reads.update(template_fields(f.template))
        elif f.expression is not None:
            named = _MV_ATTRIBUTE.findall(f.expression)
            if len(named) != len(_MV_NAME.findall(f.expression)):
                return None
            reads.update(named)
    return frozenset(reads)


def _member_exports(rule: OutboundRuleConfig, refs: frozenset[str], shape: ExportShape) -> dict[str, str]:
    """Reference attributes of ``rule`` exported value by value by one direct flow each and read nowhere
    else in the rule, -> the target attribute (``Rules.member_exports``)."""
    reads = rule_reads(rule)
    if reads is None:
        return {}
    found: dict[str, str] = {}
    for attr in sorted(refs & reads):
        readers = [f for f in rule.flows if flow_reads(f, [attr])]
        if len(readers) != 1 or readers[0].source != attr:
            continue
        target = readers[0].target
        if target not in shape.value_level or target not in shape.dn_valued:
            continue
        if sum(1 for f in rule.flows if f.target.casefold() == target.casefold()) != 1:
            continue
        if attr in template_fields(rule.dn) or any(c.attribute == attr for g in rule.scope for c in g):
            continue
        found[attr] = target
    return found


def _rule_mark(rule: OutboundRuleConfig, shape: ExportShape) -> str:
    text = rule.model_dump_json() + repr(
        (sorted(shape.references), sorted(shape.value_level), sorted(shape.dn_valued))
    )
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _exported_references(rule: OutboundRuleConfig, refs: frozenset[str]) -> frozenset[str]:
    """Reference attributes an outbound rule's flows read."""
    return frozenset(a for f in rule.flows for a in flow_reads(f, refs))


def signature(rule: InboundRuleConfig, group_index: int) -> JoinSignature:
    return tuple((c.mv, tuple(c.normalize)) for c in rule.mapping_groups()[group_index])


def _split_sources(
    rule: InboundRuleConfig, refs: tuple[tuple[str, str], ...], single: frozenset[str]
) -> frozenset[str]:
    """Reference sources of an inbound rule that staging may hold value by value (``Rules.split_sources``)."""
    targeted: dict[str, int] = {}
    for attr, _source in refs:
        targeted[attr] = targeted.get(attr, 0) + 1
    ref_flows = set(refs)
    filtered = {c.attribute for group in rule.filter for c in group}
    found: set[str] = set()
    refused = {source for attr, source in refs if attr in single or targeted[attr] > 1}
    for _attr, source in refs:
        if source in refused or source in filtered:
            continue
        read_elsewhere = False
        for f in rule.flows:
            if f.source is not None and (f.mv, f.source) in ref_flows:
                continue
            if f.source is not None:
                read_elsewhere |= f.source == source
            elif f.template is not None:
                read_elsewhere |= source in template_fields(f.template)
            elif f.exists is not None:
                read_elsewhere |= f.exists == source
            elif f.constant is None and f.dn_component is None:
                read_elsewhere = True  # an expression may read it
        if not read_elsewhere:
            found.add(source)
    return frozenset(found)


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
    reference_attrs = {
        n: frozenset(a for a, c in t.attributes.items() if c.reference) for n, t in types.items()
    }
    reference_flows = {
        (r.connector, r.object_type): tuple(
            (f.mv, f.source)
            for f in r.flows
            if f.mv in reference_attrs.get(r.mv_type, frozenset()) and f.source is not None
        )
        for r in config.inbound
    }
    export_references: dict[tuple[str, str], frozenset[str]] = {}
    shapes: dict[tuple[str, str], ExportShape] = {}
    for out in config.outbound:
        key = (out.connector, out.mv_type)
        refs = reference_attrs.get(out.mv_type, frozenset())
        used = _exported_references(out, refs)
        export_references[key] = export_references.get(key, frozenset()) | used
        declared = types[out.mv_type].attributes
        multi = {f.target for f in out.flows if f.source in declared and declared[f.source].multi_valued}
        dns = {f.target for f in out.flows if f.source in refs}
        old = shapes.get(key, _PLAIN)
        shapes[key] = ExportShape(
            export_references[key], old.value_level | frozenset(multi), old.dn_valued | frozenset(dns)
        )
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
        reference_attrs=reference_attrs,
        reference_flows={k: v for k, v in reference_flows.items() if v},
        reference_sources={
            k: frozenset(source for _attr, source in v) for k, v in reference_flows.items() if v
        },
        split_sources={
            (r.connector, r.object_type): split
            for r in config.inbound
            if r.connector not in config.export_targets()
            and (
                split := _split_sources(
                    r,
                    reference_flows[(r.connector, r.object_type)],
                    frozenset(a for a, c in types[r.mv_type].attributes.items() if not c.multi_valued)
                    if r.mv_type in types
                    else frozenset(),
                )
            )
        },
        reference_connectors=frozenset(c for (c, _t), v in reference_flows.items() if v),
        export_references={k: v for k, v in export_references.items() if v},
        export_shapes=shapes,
        xref_targets=tuple(sorted({c for (c, _t), attrs in export_references.items() if attrs})),
        outbound_reads={name: tuple(rule_reads(r) for r in config.outbound_rules(name)) for name in types},
        member_exports={
            name: tuple(
                _member_exports(
                    r, reference_attrs.get(name, frozenset()), shapes.get((r.connector, name), _PLAIN)
                )
                for r in config.outbound_rules(name)
            )
            for name in types
        },
        rule_marks={
            name: tuple(
                _rule_mark(r, shapes.get((r.connector, name), _PLAIN)) for r in config.outbound_rules(name)
            )
            for name in types
        },
        join_attributes={
            n: frozenset(attr for sig in sigs for attr, _ops in sig) for n, sigs in signatures.items()
        },
    )
