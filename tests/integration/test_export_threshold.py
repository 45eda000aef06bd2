"""Deletion threshold on the real pipeline: a mass delete is held, the rest goes on, approval releases it."""

from __future__ import annotations

import pytest

from streams.samples.generate_hr import generate, write_csv
from tests.integration import export_env
from tests.integration.export_env import KafkaEnv, delete_config

broker = export_env.broker
kafka_env = export_env.kafka_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("people", "removed", "threshold"), [(760, 600, 500)])
def test_mass_delete_is_held_until_approved(
    kafka_env: KafkaEnv, people: int, removed: int, threshold: int
) -> None:
    env = kafka_env
    delete_config(env.config, threshold=f"{{count: {threshold}}}")
    rows = [r for r in generate(people, seed=21) if r["status"] != "terminated"]
    write_csv(rows, env.hr)
    first = env.sync()
    assert first.code == 0, first.stderr
    assert first.summary["ldap"]["exports_applied"] == len(rows)
    assert first.summary["errors"] == []

    # A full import without `removed` people (a truncated HR feed), plus a title change and a new hire.
    gone, kept = rows[:removed], rows[removed:]
    changed = kept[0]
    changed["title"] = "Chief Threshold Officer"
    hire = {**kept[1], "employee_id": "E99001", "uid": "newhire1", "email": "new.hire1@example.org"}
    hire["last_name"] = "Newhire"
    write_csv([*kept, hire], env.hr)
    second = env.sync()
    assert second.code == 0, second.stderr
    assert second.summary.get("result") == "stopped-deletion-threshold-exceeded", second.stdout
    assert "run result: stopped-deletion-threshold-exceeded" in second.stdout
    reported = [
        e for e in second.summary["errors"] if e["error_type"] == "stopped-deletion-threshold-exceeded"
    ]
    assert reported and all("idsync approve-deletes ldap" in e["message"] for e in reported)
    assert {e["error_type"] for e in second.summary["errors"]} == {"stopped-deletion-threshold-exceeded"}

    entries = env.ldap_entries()
    still_there = [r["employee_id"] for r in gone if r["employee_id"] in entries]
    held = len(still_there)
    deleted = removed - held
    # No more than the threshold left, what is past it is held ...
    assert deleted <= threshold
    assert held >= removed - threshold
    # ... and the other changes were exported meanwhile.
    assert entries[changed["employee_id"]]["title"] == ["Chief Threshold Officer"]
    assert "E99001" in entries
    assert second.summary["ldap"]["exports_applied"] == deleted + 2
    # What was not removed is untouched.
    assert all(r["employee_id"] in entries for r in kept)

    # A sync without approval exports nothing more: the held deletes stay held across a restart.
    third = env.sync()
    assert third.code == 0, third.stderr
    assert third.summary["ldap"]["exports_applied"] == 0, third.summary
    entries = env.ldap_entries()
    assert len([r for r in gone if r["employee_id"] in entries]) == held

    approval = env.cli("approve-deletes", "ldap")
    assert approval.returncode == 0, approval.stderr
    assert "published on 4 partitions" in approval.stdout
    fourth = env.sync()
    assert fourth.code == 0, fourth.stderr
    # Exactly the held deletes were released: every removed person is gone, nothing else changed.
    assert fourth.summary["ldap"]["exports_applied"] == held, fourth.summary
    assert fourth.summary["errors"] == []
    after = env.ldap_entries()
    assert not [r for r in gone if r["employee_id"] in after]
    assert set(after) == {r["employee_id"] for r in kept} | {"E99001"}
    assert fourth.summary.get("result") is None
