"""Deletion threshold (Entra Connect's "prevent accidental deletes", invariant 7): which deletes may leave.

A partitioned pipeline has no single place that sees every delete of a connector, so each partition of
``export.<connector>`` gets an equal share of the threshold per window, ``floor(limit / partitions)``:
all shares together never exceed the limit, so no more than the limit leaves in a window. (``ceil``
would overshoot by up to ``partitions - 1`` when the limit is not a multiple of the partition count.)
Skew makes it stricter, never looser: a partition that gets more than its share holds the excess even
while the other partitions are idle; a limit below the partition count holds every delete.

Holding is sticky: once a partition holds a delete, every later delete of that partition is held too
until an operator approves, whatever the window, so deletes never leave out of order behind held ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from schemas.config import DeletionThresholdConfig


@dataclass(frozen=True, slots=True)
class DeleteWindow:
    """One partition's threshold state: the current window and what is held."""

    #: When the current window opened (ms); 0 = no window yet.
    start_ms: int = 0
    #: Deletes released (applied) in the current window.
    released: int = 0
    #: Deletes held now, waiting for approval.
    held: int = 0
    #: Connector-space size the percentage limit was computed from when the window opened.
    base: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    hold: bool
    #: This delete is the first one held since the last approval: report the threshold now.
    tripped: bool
    window: DeleteWindow
    #: The partition's budget in the window this decision was taken in (None: no threshold).
    budget: int | None


def window_limit(config: DeletionThresholdConfig, cs_objects: int | None) -> int | None:
    """Deletes allowed per window for the whole connector: the stricter of count and percentage.

    ``cs_objects`` is the target's connector-space size; unknown with a percentage means 0 allowed
    (fail closed: an unknown base must not let a mass delete through).
    """
    if not config.enabled:
        return None
    limits: list[int] = []
    if config.count is not None:
        limits.append(config.count)
    if config.percent is not None:
        limits.append(math.floor(config.percent * (cs_objects or 0) / 100))
    return min(limits) if limits else None


def partition_budget(limit: int, partitions: int) -> int:
    """Each partition's share of ``limit``: all shares together never exceed ``limit``."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    if limit <= 0:
        return 0
    return limit // partitions


def decide(
    window: DeleteWindow,
    config: DeletionThresholdConfig,
    partitions: int,
    now_ms: int,
    cs_objects: int | None = None,
) -> Decision:
    """Whether one delete of this partition leaves now or is held; the window after it."""
    if not config.enabled:
        return Decision(hold=False, tripped=False, window=window, budget=None)
    if window.start_ms == 0 or now_ms - window.start_ms >= config.window_s * 1000:
        window = replace(window, start_ms=now_ms, released=0, base=cs_objects)
    limit = window_limit(config, window.base)
    budget = None if limit is None else partition_budget(limit, partitions)
    if window.held > 0:
        return Decision(hold=True, tripped=False, window=replace(window, held=window.held + 1), budget=budget)
    if budget is None or window.released < budget:
        return Decision(
            hold=False, tripped=False, window=replace(window, released=window.released + 1), budget=budget
        )
    return Decision(hold=True, tripped=True, window=replace(window, held=1), budget=budget)


def superseded(window: DeleteWindow) -> DeleteWindow:
    """A held delete was overtaken by a later export of the same object: it is dropped, not released."""
    return replace(window, held=max(0, window.held - 1))


def approved(window: DeleteWindow) -> DeleteWindow:
    """The operator released what was held: nothing held, and the next delete opens a fresh window."""
    return DeleteWindow()


def needs_base(window: DeleteWindow, config: DeletionThresholdConfig, now_ms: int) -> bool:
    """Whether deciding the next delete opens a window that needs the connector-space size."""
    if not config.enabled or config.percent is None:
        return False
    return window.start_ms == 0 or now_ms - window.start_ms >= config.window_s * 1000
