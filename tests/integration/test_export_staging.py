"""Acceptance 4 of the export issue: staging mode exports nothing, and its pending-export listing is what
normal mode then exports."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.samples.generate_hr import generate, write_csv
from tests.integration import export_env
from tests.integration.export_env import KafkaEnv

broker = export_env.broker
kafka_env = export_env.kafka_env

pytestmark = pytest.mark.integration


def by_dn(entries: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    return {e["_dn"][0].lower(): {k.lower(): v for k, v in e.items()} for e in entries.values()}


def test_staging_mode_lists_what_normal_mode_then_exports(kafka_env: KafkaEnv) -> None:
    env = kafka_env
    rows = [r for r in generate(40, seed=41) if r["status"] != "terminated"][:24]
    write_csv(rows[:20], env.hr)
    first = env.sync()
    assert first.code == 0, first.stderr
    before = env.ldap_entries()
    assert len(before) == 20

    # Three hires, two title changes, one person gone from the feed (deprovisioned by delete).
    rows[2]["title"] = "Staged Title"
    rows[5]["title"] = "Another Staged Title"
    gone = rows[7]
    write_csv([r for r in rows[:23] if r is not gone], env.hr)

    staged = env.sync("--no-export")
    assert staged.code == 0, staged.stderr
    assert staged.summary["ldap"]["exports_applied"] == 0
    assert env.ldap_entries() == before  # nothing reached the target

    listing = env.pending()
    assert Counter(n["op"] for n in listing) == {"add": 3, "update": 2, "delete": 1}
    updates = {n["dn"].lower(): n for n in listing if n["op"] == "update"}
    for n in updates.values():
        assert n["attributes"]["title"]["old"] != n["attributes"]["title"]["new"]

    normal = env.sync()
    assert normal.code == 0, normal.stderr
    assert normal.summary["errors"] == []
    assert normal.summary["ldap"]["exports_applied"] == sum(n["exports"] for n in listing)
    assert env.pending() == []  # everything listed was exported

    after = by_dn(env.ldap_entries())
    old = by_dn(before)
    for n in listing:
        dn = n["dn"].lower()
        if n["op"] == "delete":
            assert dn in old and dn not in after
            continue
        entry = after[dn]
        for attr, change in n["attributes"].items():
            assert sorted(entry[attr.lower()]) == sorted(change["new"]), (dn, attr)
    # Nothing changed that the listing did not name.
    listed = {n["dn"].lower() for n in listing}
    for dn, entry in after.items():
        if dn not in listed:
            assert entry == old[dn]
