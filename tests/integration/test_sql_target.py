"""A PostgreSQL table as a provisioning target, through ``idsync sync`` as a real process: provisioning
with a DN template, a rename and a move (the DN column changes, the row keeps its anchor), a
disable instead of a delete, a delete, and export confirmation by the next import (issue 4 acceptance 1
for a SQL target)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.integration.harness import write_rows

pytestmark = pytest.mark.integration

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
COLUMNS = ["account_id", "dn", "login", "full_name", "title", "department", "status"]


def config(work: Path, schema: str, deprovision: str) -> Path:
    cfg = work / "sqltarget.yaml"
    cfg.write_text(
        f"""
name: sqltarget
connectors:
  hr: {{kind: csv, path: "{work / "hr.csv"}", object_type: employee, anchor: employee_id}}
  db:
    kind: sql
    url: "{URL}"
    object_types:
      account: {{schema: {schema}, table: accounts, anchor: account_id, dn_column: dn}}
metaverse:
  person:
    deletion: {{rule: source-disconnects, sources: [hr]}}
inbound:
  - connector: hr
    object_type: employee
    mv_type: person
    join: [{{cs: employee_id, mv: employeeId}}]
    project: true
    flows:
      - {{mv: employeeId, source: employee_id}}
      - {{mv: givenName, source: first_name}}
      - {{mv: sn, source: last_name}}
      - {{mv: uid, source: uid}}
      - {{mv: department, source: department}}
      - {{mv: title, source: title}}
      - {{mv: status, source: status}}
  - connector: db
    object_type: account
    mv_type: person
    join: [{{cs: account_id, mv: employeeId}}]
outbound:
  - connector: db
    mv_type: person
    object_type: account
    scope: [[{{attribute: status, operator: notequal, value: terminated}}]]
    dn: "cn={{uid}},ou={{department}},o=db"
    flows:
      - {{target: account_id, source: employeeId}}
      - {{target: login, source: uid}}
      - {{target: full_name, template: "{{givenName}} {{sn}}"}}
      - {{target: title, source: title, allow_null: true}}
      - {{target: department, source: department}}
      - {{target: status, constant: [active]}}
    deprovision: {deprovision}
"""
    )
    return cfg


def person(i: int, **changes: str) -> dict[str, str]:
    row = {
        "employee_id": f"E{i}",
        "first_name": f"First{i}",
        "last_name": f"Last{i}",
        "uid": f"u{i}",
        "department": "Sales" if i % 2 else "Ops",
        "title": "Engineer",
        "status": "active",
    }
    row.update(changes)
    return row


class Target:
    def __init__(self, work: Path, engine: Engine, schema: str, deprovision: str) -> None:
        self.work = work
        self.engine = engine
        self.schema = schema
        self.config = config(work, schema, deprovision)
        self.runs = 0

    def sync(self, people: list[dict[str, str]]) -> dict[str, Any]:
        write_rows(self.work / "hr.csv", people)
        self.runs += 1
        out = self.work / f"summary-{self.runs}.json"
        cmd = [sys.executable, "-m", "streams.cli", "sync", "-c", str(self.config)]
        cmd += ["--data-dir", str(self.work / "data"), "--json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        summary: dict[str, Any] = json.loads(out.read_text())
        assert summary["errors"] == [], summary["errors"][:5]
        db = summary["db"]
        # every applied export was confirmed by the import that followed it
        assert db["exports_confirmed"] == db["exports_applied"] and db["export_errors"] == 0, summary
        return summary

    def rows(self) -> dict[str, dict[str, str | None]]:
        with self.engine.connect() as conn:
            result = conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.accounts"))
            return {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in result}


def _target(tmp_path: Path, deprovision: str) -> Iterator[Target]:
    engine = create_engine(URL)
    schema = f"idsync_it_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        conn.exec_driver_sql(
            f"CREATE TABLE {schema}.accounts (account_id VARCHAR(20) PRIMARY KEY, dn VARCHAR(200) UNIQUE, "
            "login VARCHAR(50), full_name VARCHAR(100), title VARCHAR(50), department VARCHAR(50), "
            "status VARCHAR(20))"
        )
    try:
        yield Target(tmp_path, engine, schema, deprovision)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture
def disabling(tmp_path: Path) -> Iterator[Target]:
    yield from _target(
        tmp_path, '{action: disable, disable: {move_to: "ou=disabled,o=db", set: {status: [disabled]}}}'
    )


@pytest.fixture
def deleting(tmp_path: Path) -> Iterator[Target]:
    yield from _target(tmp_path, "{action: delete}")


def test_provision_rename_move_and_disable_in_a_postgresql_table(disabling: Target) -> None:
    people = [person(i) for i in range(1, 7)]
    first = disabling.sync(people)
    assert first["db"]["exports_applied"] == 6
    rows = disabling.rows()
    assert set(rows) == {f"E{i}" for i in range(1, 7)}
    assert rows["E1"] == {
        "account_id": "E1",
        "dn": "cn=u1,ou=Sales,o=db",
        "login": "u1",
        "full_name": "First1 Last1",
        "title": "Engineer",
        "department": "Sales",
        "status": "active",
    }

    # E1's uid changes: a rename (the DN column, same row); E2 changes department: a move; E3 is terminated:
    # disabled (moved aside and marked) instead of deleted; E4's title is cleared (allow_null).
    people[0] = person(1, uid="u1b")
    people[1] = person(2, department="Legal")
    people[2] = person(3, status="terminated")
    people[3] = person(4, title="")
    second = disabling.sync(people)
    assert second["db"]["exports_applied"] == 4, second["db"]
    rows = disabling.rows()
    assert set(rows) == {f"E{i}" for i in range(1, 7)}  # nothing deleted, no row added
    assert (rows["E1"]["dn"], rows["E1"]["login"]) == ("cn=u1b,ou=Sales,o=db", "u1b")
    assert (rows["E2"]["dn"], rows["E2"]["department"]) == ("cn=u2,ou=Legal,o=db", "Legal")
    assert (rows["E3"]["dn"], rows["E3"]["status"]) == ("cn=u3,ou=disabled,o=db", "disabled")
    assert rows["E4"]["title"] is None
    assert rows["E5"] == {**rows["E5"], "dn": "cn=u5,ou=Sales,o=db", "status": "active"}

    # E3 is rehired: moved back and active again; an unchanged run after that exports nothing
    people[2] = person(3)
    third = disabling.sync(people)
    assert third["db"]["exports_applied"] == 1, third["db"]
    rows = disabling.rows()
    assert (rows["E3"]["dn"], rows["E3"]["status"]) == ("cn=u3,ou=Sales,o=db", "active")
    assert disabling.sync(people)["db"]["exports_applied"] == 0


def test_deprovision_by_delete_removes_the_row(deleting: Target) -> None:
    people = [person(i) for i in range(1, 5)]
    deleting.sync(people)
    assert set(deleting.rows()) == {"E1", "E2", "E3", "E4"}
    # E2 leaves HR (its metaverse object is deleted), E4 is terminated (out of scope): both rows go
    people = [people[0], people[2], person(4, status="terminated")]
    second = deleting.sync(people)
    assert second["db"]["exports_applied"] == 2, second["db"]
    assert set(deleting.rows()) == {"E1", "E3"}
    assert deleting.sync(people)["db"]["exports_applied"] == 0
