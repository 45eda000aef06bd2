"""``engine.shared``: the journal of a shared map's changes, undone when the steps raise, and the check
the test suite runs on every step (``SharedMaps.check``): a change that did not go through the journal
is caught whether the steps return or raise."""

from __future__ import annotations

import pytest

from engine.shared import SharedMaps, UnjournaledChange, journal_of, pop_entry, set_entry


def test_journaled_changes_are_undone_when_the_steps_raise() -> None:
    entries = {"a": "1", "b": "2"}
    shared = SharedMaps(least=2, check=True)
    assert shared.share(entries) is entries
    small = {"c": "3"}
    assert shared.share(small) is not small  # below ``least``: copied
    with pytest.raises(RuntimeError), shared:
        journal = journal_of(entries)
        set_entry(entries, "a", "10", journal)
        set_entry(entries, "z", "26", journal)
        pop_entry(entries, "b", journal)
        raise RuntimeError("boom")
    assert entries == {"a": "1", "b": "2"} and shared.journal == []


def test_a_change_outside_the_journal_is_caught_whether_the_steps_return_or_raise() -> None:
    for raising in (False, True):
        entries = {"a": "1", "b": "2"}
        shared = SharedMaps(least=1, check=True)
        shared.share(entries)
        with pytest.raises(UnjournaledChange, match=r"\['b'\]"), shared:
            set_entry(entries, "a", "10", journal_of(entries))
            entries["b"] = "20"  # not journaled: a failed batch's undo would leave it
            if raising:
                raise RuntimeError("boom")
    # Journaled changes pass; unchecked maps are not verified.
    entries = {"a": "1"}
    with SharedMaps(least=1, check=True) as shared:
        shared.share(entries)
        set_entry(entries, "a", "2", journal_of(entries))
    assert shared.changed
    with SharedMaps(least=1, check=False) as unchecked:
        unchecked.share(entries)
        entries["a"] = "3"
