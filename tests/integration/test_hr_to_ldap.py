"""HR CSV -> LDAP through the whole pipeline: real broker (embedded Tansu), real slapd, real processes."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from streams.cli import CLEAN_MARKER
from streams.samples.generate_hr import generate, write_csv
from tests.integration.harness import Env, read_rows, write_rows

pytestmark = pytest.mark.integration

PEOPLE = "ou=people,dc=example,dc=org"
DISABLED = "ou=disabled,dc=example,dc=org"


def _by_employee(entries: dict[str, dict[str, list[str]]]) -> dict[str, tuple[str, dict[str, list[str]]]]:
    return {attrs["employeeNumber"][0]: (dn, attrs) for dn, attrs in entries.items()}


def _confirmed_all(run_summary: dict) -> None:
    ldap = run_summary["ldap"]
    assert ldap["exports_confirmed"] == ldap["exports_applied"], run_summary
    assert ldap["export_errors"] == 0, run_summary


def test_hr_to_ldap_lifecycle(demo_env: Env) -> None:
    rows = generate(60, seed=11)
    write_csv(rows, demo_env.hr)
    active = [r for r in rows if r["status"] != "terminated"]

    # 1. New hires appear with the flowed attributes; every export is confirmed by the next import.
    first = demo_env.sync()
    assert first.code == 0, first.stderr
    _confirmed_all(first.summary)
    assert first.summary["ldap"]["exports_applied"] == len(active)
    people = _by_employee(demo_env.entries(PEOPLE))
    assert set(people) == {r["employee_id"] for r in active}
    someone = next(r for r in active if r["title"])
    dn, attrs = people[someone["employee_id"]]
    assert dn == f"cn={someone['first_name']} {someone['last_name']} ({someone['uid']}),{PEOPLE}"
    assert attrs["givenName"] == [someone["first_name"]]
    assert attrs["sn"] == [someone["last_name"]]
    assert attrs["mail"] == [someone["email"]]
    assert attrs["title"] == [someone["title"]]
    assert attrs["departmentNumber"] == [someone["department"]]
    assert attrs["displayName"] == [f"{someone['first_name']} {someone['last_name']}"]

    # 2. A changed surname renames the entry (modify-DN, same entryUUID); a termination disables it.
    renamed = active[3]
    leaver = active[7]
    uuid_before = people[renamed["employee_id"]][1]["entryUUID"]
    leaver_uuid = people[leaver["employee_id"]][1]["entryUUID"]
    changed = read_rows(demo_env.hr)
    for r in changed:
        if r["employee_id"] == renamed["employee_id"]:
            r["last_name"] = "Renamed-Surname"
        if r["employee_id"] == leaver["employee_id"]:
            r["status"] = "terminated"
    write_rows(demo_env.hr, changed)
    second = demo_env.sync()
    assert second.code == 0, second.stderr
    _confirmed_all(second.summary)
    people = _by_employee(demo_env.entries(PEOPLE))
    dn, attrs = people[renamed["employee_id"]]
    assert dn == f"cn={renamed['first_name']} Renamed-Surname ({renamed['uid']}),{PEOPLE}"
    assert attrs["entryUUID"] == uuid_before
    assert attrs["sn"] == ["Renamed-Surname"]
    assert leaver["employee_id"] not in people
    disabled = _by_employee(demo_env.entries(DISABLED))
    assert disabled[leaver["employee_id"]][1]["employeeType"] == ["disabled"]
    assert disabled[leaver["employee_id"]][1]["entryUUID"] == leaver_uuid
    # Only the rename and the disable were exported: nothing else changed.
    assert second.summary["ldap"]["exports_applied"] == 2, second.summary

    # 3. A second, unchanged full import causes zero exports (the last run's state is carried over)...
    third = demo_env.sync()
    assert third.code == 0, third.stderr
    assert third.summary["ldap"]["exports_applied"] == 0, third.summary
    # ... and so does one from fresh state (what follows a killed run): existing entries join.
    (demo_env.work / "data" / "state" / CLEAN_MARKER).unlink()
    fresh = demo_env.sync()
    assert fresh.code == 0, fresh.stderr
    assert fresh.summary["ldap"]["exports_applied"] == 0, fresh.summary
    # ... and so does a second cycle on the same state.
    fourth = demo_env.sync("--cycles", "2")
    assert fourth.code == 0, fourth.stderr
    assert fourth.summary["cycles"] == [{"exports_applied": 0}, {"exports_applied": 0}]


def test_malformed_row_and_schema_violation_are_per_object_errors(demo_env: Env, tmp_path) -> None:
    rows = generate(20, seed=3)
    rows = [r for r in rows if r["status"] != "terminated"]
    no_surname = rows[5]
    no_surname["last_name"] = ""
    write_csv(rows, demo_env.hr)
    text = demo_env.hr.read_text(encoding="utf-8").splitlines()
    text.insert(4, "E99999,Broken,Row,too,few")  # physical line 5: wrong field count
    demo_env.hr.write_text("\n".join(text) + "\n", encoding="utf-8")
    # A DN that does not need sn, so the add reaches slapd and fails the inetOrgPerson schema there.
    config = tmp_path / "uid-dn.yaml"
    config.write_text(
        demo_env.config.read_text().replace(
            'dn: "cn={givenName} {sn} ({uid}),ou=people,dc=example,dc=org"',
            'dn: "uid={uid},ou=people,dc=example,dc=org"',
        )
    )
    demo_env.config = config
    run = demo_env.sync()
    assert run.code == 0, run.stderr  # per-object errors are not fatal
    errors = run.summary["errors"]
    malformed = [e for e in errors if e["error_type"] == "import-malformed-row"]
    assert len(malformed) == 1 and malformed[0]["locator"] == "hr.csv:5", errors
    violation = [e for e in errors if e["error_type"] == "schema-violation"]
    assert len(violation) == 1, errors
    assert f"uid={no_surname['uid']},ou=people" in violation[0]["locator"]
    assert "sn" in violation[0]["message"] or "objectClass" in violation[0]["message"], violation
    assert "per-object errors" in run.stdout
    # The rest of the run went on.
    people = demo_env.entries(PEOPLE)
    assert len(people) == len(rows) - 1


def test_bad_config_names_the_field(demo_env: Env, tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(demo_env.config.read_text().replace("${IDSYNC_DEMO_HR:-hr.csv}", "missing.csv"))
    demo_env.config = config
    run = demo_env.sync(timeout=60)
    assert run.code == 2
    assert "connectors.hr.path: file not found" in run.stderr


def test_killed_worker_rerun_converges(demo_env: Env, tmp_path) -> None:
    """Kill -9 the sync mid-export, run it again: same directory content as an uninterrupted run."""
    rows = generate(1500, seed=5)
    write_csv(rows, demo_env.hr)
    cmd, _ = demo_env.command()
    proc = subprocess.Popen(
        cmd, env=demo_env.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    expected = sum(1 for r in rows if r["status"] != "terminated")
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        count = demo_env.slapd.entry_count(PEOPLE, scope="level")
        if 0 < count < expected // 2:
            proc.send_signal(signal.SIGKILL)
            killed_at = count
            break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_at is not None, "the sync finished before it could be killed mid-run"
    rerun = demo_env.sync()
    assert rerun.code == 0, rerun.stderr
    after_kill = demo_env.entries()

    # Reference: the same input, uninterrupted, into a fresh directory.
    from connectors.ldap.slapd import Slapd

    with Slapd(tmp_path / "ref-slapd") as ref:
        ref.add_ou("disabled")
        ref_env = Env(ref, tmp_path / "ref")
        ref_env.work.mkdir()
        write_csv(rows, ref_env.hr)
        ref_run = ref_env.sync()
        assert ref_run.code == 0, ref_run.stderr
        reference = ref_env.entries()

    def content(entries: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        return {dn.lower(): {k: v for k, v in a.items() if k != "entryUUID"} for dn, a in entries.items()}

    assert len(after_kill) == expected
    assert content(after_kill) == content(reference)
