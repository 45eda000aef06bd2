"""The benchmark's synthetic organisation: deterministic, realistic mixes, valid change records."""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas.records import ChangeRecord, ImportMessage, RunMarker
from streams.bench.org import generate
from streams.bench.records import RecordFactory, delta_records, initial_count, initial_load, title_change

_IMPORT = TypeAdapter(ImportMessage)


def test_same_seed_same_organisation_other_seed_differs() -> None:
    a, b, c = generate(500, seed=7), generate(500, seed=7), generate(500, seed=8)
    assert a.people == b.people and a.dir_accounts == b.dir_accounts and a.app_accounts == b.app_accounts
    assert a.people != c.people


def test_organisation_shape() -> None:
    org = generate(2000, seed=7)
    ids = [p.employee_id for p in org.people]
    assert len(set(ids)) == len(ids) == 2000
    # A management tree: everyone but the first reports to someone generated before them.
    position = {eid: i for i, eid in enumerate(ids)}
    assert org.people[0].manager is None
    assert all(p.manager is not None and position[p.manager] < p.index for p in org.people[1:])
    assert 0.1 < len(org.dir_accounts) / 2000 < 0.3
    assert 0.4 < len(org.app_accounts) / 2000 < 0.6
    assert len(org.groups["all-staff"]) == 2000
    assert sum(p.status == "terminated" for p in org.people) < 100


def test_delta_round_mix_is_about_one_one_five_percent() -> None:
    org = generate(10_000, seed=7)
    changes = org.delta(1)
    ops = [op for op, _b, _a in changes]
    assert 50 <= ops.count("c") <= 100
    assert 50 <= ops.count("d") <= 100
    assert 300 <= ops.count("u") <= 500
    # The same round of a regenerated organisation is identical.
    assert generate(10_000, seed=7).delta(1) == changes
    for op, before, after in changes:
        if op == "u":
            assert before is not None and after is not None and before != after
            assert before.employee_id == after.employee_id


def test_records_are_valid_bracketed_runs() -> None:
    org = generate(300, seed=7)
    f = RecordFactory({"hr": "t.hr", "dir": "t.dir", "appdb": "t.appdb"}, partitions=4)
    messages = list(initial_load(org, f, ts_ms=1))
    decoded = [_IMPORT.validate_json(value) for _t, _k, value, _p in messages]
    records = [m for m in decoded if isinstance(m, ChangeRecord)]
    markers = [m for m in decoded if isinstance(m, RunMarker)]
    assert len(records) == initial_count(org)
    assert len(markers) == 3 * 2 * 4  # three connectors, start and end, every partition
    assert {r.source.connector for r in records} == {"hr", "dir", "appdb"}
    # A later run's records carry a higher version than the earlier run's.
    versions = {r.source.connector: r.source.version for r in records}
    assert versions["dir"] < versions["hr"] < versions["appdb"]
    deltas = [_IMPORT.validate_json(v) for _t, _k, v, _p in delta_records(org.delta(1), f, 1, ts_ms=2)]
    assert all(isinstance(d, ChangeRecord) and d.source.version > versions["appdb"] for d in deltas)
    assert {d.op for d in deltas} == {"c", "u", "d"}


def test_a_title_change_changes_the_title_alone() -> None:
    """The latency run's change: the person's record as the initial load published it, but for the title
    (its manager reference and its DN kept: a change that dropped them would also unregister a reference)."""
    org = generate(300, seed=7)
    f = RecordFactory({"hr": "t.hr", "dir": "t.dir", "appdb": "t.appdb"}, partitions=4)
    loaded = {
        r.anchor: r
        for r in (_IMPORT.validate_json(v) for _t, _k, v, _p in initial_load(org, f, ts_ms=1))
        if isinstance(r, ChangeRecord) and r.source.connector == "hr" and r.object_type == "employee"
    }
    p = org.people[5]
    assert p.manager is not None
    change = _IMPORT.validate_json(title_change(f, p, "lat-5", ts_ms=2)[2])
    assert isinstance(change, ChangeRecord) and change.after is not None
    before = loaded[p.employee_id]
    assert before.after is not None
    assert before.source.dn is not None and change.source.dn == before.source.dn
    assert change.after.keys() == before.after.keys()
    assert {k for k, v in change.after.items() if before.after[k] != v} == {"title"}
    assert change.after["title"] == ["lat-5"] and change.source.version > before.source.version
