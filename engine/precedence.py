"""Precedence: merge the contributions of joined connectors into metaverse attribute values.

Ranked precedence: the lowest rank wins; equal ranks: the latest change wins. A null from the winner
falls back to the next contributor. Initial-only flows only fill an empty attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import Attrs
from schemas.state import ConnectorLink


@dataclass(frozen=True, slots=True)
class Contributor:
    """How a connector takes part in precedence for one metaverse type."""

    rank: int
    initial_only: frozenset[str]


def resolve(
    links: dict[str, ConnectorLink],
    contributors: dict[str, Contributor],
    current: Attrs,
) -> tuple[Attrs, dict[str, str]]:
    """Metaverse attributes and, per attribute, the connector whose value won."""
    candidates: dict[str, list[tuple[int, int, str, list[str]]]] = {}
    for connector, link in links.items():
        info = contributors.get(connector, Contributor(10_000, frozenset()))
        for attr, values in link.flows.items():
            candidates.setdefault(attr, []).append((info.rank, -link.ts_ms, connector, values))
    attrs: Attrs = {}
    winners: dict[str, str] = {}
    for attr, options in candidates.items():
        options.sort(key=lambda o: (o[0], o[1], o[2]))
        for _rank, _ts, connector, values in options:
            contributor = contributors.get(connector)
            if contributor is not None and attr in contributor.initial_only and current.get(attr):
                # Initial flow only: once the attribute has a value this connector no longer writes it,
                # but the value it set stays.
                attrs[attr] = list(current[attr])
                winners[attr] = connector
                break
            if values:
                attrs[attr] = list(values)
                winners[attr] = connector
                break
    return attrs, winners
