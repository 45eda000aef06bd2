"""Deletion threshold decisions (engine.threshold): budgets, windows, sticky holds, approval."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.threshold import (
    DeleteWindow,
    approved,
    decide,
    needs_base,
    partition_budget,
    superseded,
    window_limit,
)
from schemas.config import DeletionThresholdConfig, IdsyncConfig

T0 = 1_700_000_000_000


def run(
    config: DeletionThresholdConfig, partitions: int, deletes: int, now: int = T0, base: int | None = None
):
    window = DeleteWindow()
    released = held = tripped = 0
    for i in range(deletes):
        d = decide(window, config, partitions, now + i, base)
        window = d.window
        held += d.hold
        released += not d.hold
        tripped += d.tripped
    return released, held, tripped, window


def test_default_is_500_per_hour_like_entra_connect() -> None:
    c = DeletionThresholdConfig()
    assert (c.enabled, c.count, c.percent, c.window_s) == (True, 500, None, 3600)
    released, held, tripped, window = run(c, 1, 600)
    assert (released, held, tripped) == (500, 100, 1)
    assert window.held == 100


def test_per_partition_budget_never_lets_more_than_the_threshold_out() -> None:
    assert partition_budget(500, 4) == 125
    assert partition_budget(10, 4) == 2  # ceil would allow 12
    assert partition_budget(3, 4) == 0
    assert partition_budget(0, 4) == 0
    with pytest.raises(ValueError):
        partition_budget(5, 0)
    released, held, _, _ = run(DeletionThresholdConfig(count=10), 4, 5)
    assert (released, held) == (2, 3)


@given(
    count=st.integers(1, 1000),
    partitions=st.integers(1, 64),
    per_partition=st.lists(st.integers(0, 300), min_size=1, max_size=64),
)
def test_total_released_in_a_window_is_at_most_the_threshold(
    count: int, partitions: int, per_partition: list[int]
) -> None:
    config = DeletionThresholdConfig(count=count)
    total = 0
    for deletes in per_partition[:partitions]:
        released, held, _, _ = run(config, partitions, deletes)
        assert released + held == deletes
        total += released
    assert total <= count


def test_a_new_window_restores_the_budget_but_a_hold_is_sticky() -> None:
    c = DeletionThresholdConfig(count=2, window_s=60)
    w = DeleteWindow()
    for _ in range(2):
        w = decide(w, c, 1, T0).window
    assert decide(w, c, 1, T0 + 59_999).hold
    # Next window, nothing held: the budget is back.
    fresh = decide(w, c, 1, T0 + 60_000)
    assert not fresh.hold and fresh.window.released == 1 and fresh.window.start_ms == T0 + 60_000
    # Held in the first window: later deletes stay held whatever the window, reported only once.
    tripped = decide(w, c, 1, T0 + 1)
    assert tripped.hold and tripped.tripped
    later = decide(tripped.window, c, 1, T0 + 3_600_000)
    assert later.hold and not later.tripped and later.window.held == 2


def test_approval_releases_and_opens_a_fresh_window() -> None:
    c = DeletionThresholdConfig(count=1)
    _, held, _, w = run(c, 1, 3)
    assert held == 2
    w = approved(w)
    assert w == DeleteWindow()
    again = decide(w, c, 1, T0 + 10)
    assert not again.hold
    assert decide(again.window, c, 1, T0 + 11).tripped


def test_superseded_hold_is_dropped() -> None:
    c = DeletionThresholdConfig(count=1)
    _, _, _, w = run(c, 1, 2)
    assert w.held == 1
    w = superseded(w)
    assert w.held == 0
    assert superseded(w).held == 0
    # The window's budget is still used up: the next delete is held and reported again.
    assert decide(w, c, 1, T0 + 5).tripped


def test_percentage_of_the_connector_space_and_the_stricter_limit() -> None:
    pct = DeletionThresholdConfig(count=None, percent=10)
    assert window_limit(pct, 1000) == 100
    assert window_limit(pct, None) == 0  # unknown size: fail closed
    both = DeletionThresholdConfig(count=50, percent=10)
    assert window_limit(both, 1000) == 50
    assert window_limit(both, 200) == 20
    assert window_limit(DeletionThresholdConfig(enabled=False), 10) is None
    assert needs_base(DeleteWindow(), pct, T0)
    assert not needs_base(DeleteWindow(), DeletionThresholdConfig(), T0)
    released, held, _, w = run(pct, 2, 80, base=1000)
    assert (released, held, w.base) == (50, 30, 1000)
    # The base is the size when the window opened; a later size does not change this window.
    assert not needs_base(w, pct, T0 + 100)


def test_disabled_threshold_releases_everything() -> None:
    released, held, _, _ = run(DeletionThresholdConfig(enabled=False), 4, 5000)
    assert (released, held) == (5000, 0)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        IdsyncConfig.model_validate(
            {
                "connectors": {
                    "ldap": {
                        "kind": "ldap",
                        "uri": "ldap://x",
                        "base_dn": "dc=x",
                        "deletion_threshold": {"count": 0},
                    }
                }
            }
        )
    assert "connectors.ldap.deletion_threshold.count" in str(err.value).replace("\n", ".")
    with pytest.raises(ValidationError) as err:
        DeletionThresholdConfig(count=None)
    assert "give count and/or percent" in str(err.value)
    with pytest.raises(ValidationError) as err:
        DeletionThresholdConfig(percent=150)
    assert "percent" in str(err.value)
    assert DeletionThresholdConfig(enabled=False, count=None).enabled is False
