"""Precedence: merge the contributions of joined connectors into metaverse attribute values.

Per metaverse attribute, either
- ranked (default): the connector with the lowest rank wins (equal ranks: the latest contribution), or
- equal: the latest source change of the attribute wins, whichever connector made it; the same change
  time with different values is a tie, won by the first connector name and reported
  (``ambiguous-import-flow-from-multiple-connectors``).
A null from the winner falls back to the next contributor unless its flow is ``authoritative_null``.
Initial-only flows only fill an empty attribute. A value retained from a connector that disconnected
without recall stays until a flow changes the attribute.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass, field

from engine.values import same_values
from schemas.records import Attrs
from schemas.state import ConnectorLink, RetainedValue


@dataclass(frozen=True, slots=True)
class Contributor:
    """How a connector takes part in precedence for one metaverse type."""

    rank: int
    initial_only: frozenset[str]
    #: Attributes whose null from this connector wins like a value.
    authoritative_null: frozenset[str] = frozenset()


_NOBODY = Contributor(10_000, frozenset())


@dataclass(slots=True)
class Resolution:
    """Metaverse attributes, per attribute the connector whose value won, and equal-precedence ties."""

    attributes: Attrs
    winners: dict[str, str]
    #: attribute -> connectors that changed it at the same time with different values (winner first).
    ties: dict[str, list[str]] = field(default_factory=dict)


def changed_at(link: ConnectorLink, attr: str) -> int:
    """Source time of the change that gave ``attr`` its current value in this connector's contribution."""
    return link.changed_ts.get(attr, link.ts_ms)


def resolve_all(
    links: Mapping[str, ConnectorLink],
    contributors: Mapping[str, Contributor],
    current: Attrs,
    equal: Container[str] = (),
    retained: Mapping[str, RetainedValue] | None = None,
    only: Collection[str] | None = None,
    winners: Mapping[str, str] | None = None,
) -> Resolution:
    """Resolve every attribute some connector flows (``equal``: attributes with equal precedence).

    ``only``: resolve just these attributes and keep the others as ``current`` (their winners as
    ``winners``) — what a full resolution gives when one connector's contribution changed and ``only``
    names every attribute it flowed before or flows now: no other attribute's candidates changed.
    """
    candidates: dict[str, list[tuple[tuple[int, int, str], str, list[str]]]] = {}
    for connector, link in links.items():
        info = contributors.get(connector, _NOBODY)
        rank, newest = info.rank, -link.ts_ms
        changed_ts = link.changed_ts
        for attr, values in link.flows.items():
            if only is not None and attr not in only:
                continue
            if attr in equal:
                key = (-changed_ts.get(attr, link.ts_ms), 0, connector)
            else:
                key = (rank, newest, connector)
            option = (key, connector, values)
            found = candidates.get(attr)
            if found is None:
                candidates[attr] = [option]
            else:
                found.append(option)
    if only is None:
        res = Resolution({}, {})
    else:
        res = Resolution(
            {a: v for a, v in current.items() if a not in only},
            {a: c for a, c in (winners or {}).items() if a not in only},
        )
    for attr, kept in (retained or {}).items():
        if only is not None and attr not in only:
            continue
        res.attributes[attr] = list(kept.values)
        res.winners[attr] = kept.connector
    for attr, options in candidates.items():
        if attr in res.winners:
            continue  # retained until a flow changes it
        if len(options) > 1:
            options.sort(key=_first)
        effective: list[tuple[tuple[int, int, str], str, list[str]]] = []
        for key, connector, values in options:
            info = contributors.get(connector, _NOBODY)
            if attr in info.initial_only and current.get(attr):
                # Initial flow only: once the attribute has a value this connector no longer writes it,
                # but the value it set stays.
                effective.append((key, connector, list(current[attr])))
                break
            if values or attr in info.authoritative_null:
                effective.append((key, connector, values))
        if not effective:
            continue
        _key, winner, values = effective[0]
        res.winners[attr] = winner
        if values:
            res.attributes[attr] = list(values)
        if attr in equal:
            tied = [c for k, c, v in effective if k[0] == effective[0][0][0] and not same_values(v, values)]
            if tied:
                res.ties[attr] = [winner, *tied]
    return res


def _first(option: tuple[tuple[int, int, str], str, list[str]]) -> tuple[int, int, str]:
    return option[0]


def resolve(
    links: dict[str, ConnectorLink],
    contributors: dict[str, Contributor],
    current: Attrs,
) -> tuple[Attrs, dict[str, str]]:
    """Metaverse attributes and, per attribute, the connector whose value won (ranked precedence)."""
    res = resolve_all(links, contributors, current)
    return res.attributes, res.winners
