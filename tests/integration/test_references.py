"""Reference attributes through the real pipeline (embedded broker, ``idsync sync`` as a real process):
issue 3 acceptance 4, a report whose manager arrives 10,000 records later ends with the right manager."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.codec import unpack
from schemas.state import MVObject
from streams.config import load_config
from streams.runtime import Runtime, Settings

pytestmark = pytest.mark.integration

PEOPLE = "ou=people,dc=example,dc=org"
FILLERS = 10_000


def dn(emp: str) -> str:
    return f"uid={emp},{PEOPLE}"


def write_config(work: Path, hr: Path) -> Path:
    cfg = work / "refs.yaml"
    cfg.write_text(
        f"""
name: refs
connectors:
  hr: {{kind: csv, path: "{hr}", object_type: employee, anchor: employee_id, dn_column: dn}}
metaverse:
  person:
    attributes:
      manager: {{reference: true}}
inbound:
  - connector: hr
    object_type: employee
    mv_type: person
    join: [{{cs: employee_id, mv: employeeId}}]
    project: true
    flows:
      - {{mv: employeeId, source: employee_id}}
      - {{mv: manager, source: manager}}
pipeline: {{partitions: 4}}
"""
    )
    return cfg


def test_a_report_whose_manager_arrives_10000_records_later_gets_the_right_manager(tmp_path: Path) -> None:
    hr = tmp_path / "hr.csv"
    # The report first, 10,000 other people, its manager last. Each other person's manager is the next
    # person in the file (a forward reference: every one of them starts as a placeholder).
    rows = [{"employee_id": "R", "dn": dn("R"), "manager": dn("M")}]
    for i in range(FILLERS):
        nxt = f"F{i + 1}" if i + 1 < FILLERS else "M"
        rows.append({"employee_id": f"F{i}", "dn": dn(f"F{i}"), "manager": dn(nxt).upper()})
    rows.append({"employee_id": "M", "dn": dn("M"), "manager": ""})
    with hr.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["employee_id", "dn", "manager"])
        w.writeheader()
        w.writerows(rows)
    cfg = write_config(tmp_path, hr)
    data = tmp_path / "data"
    out = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "streams.cli",
        "sync",
        "-c",
        str(cfg),
        "--data-dir",
        str(data),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["metaverse"]["mv_objects"] == FILLERS + 2, summary
    assert summary["errors"] == [], summary["errors"][:5]

    rt = Runtime(Settings(bootstrap_servers="127.0.0.1:1", data_dir=data), load_config(cfg))
    try:
        objects = [unpack(v, MVObject) for _p, k, v in rt.store("mv").scan_all()]
    finally:
        rt.close_stores()
    by_emp = {m.attributes["employeeId"][0]: m for m in objects if not m.deleted}
    assert len(by_emp) == FILLERS + 2
    manager_of = {row["employee_id"]: row["manager"] for row in rows}
    # Acceptance 4: the report ends with the right manager: the manager's mv_id, never a DN.
    assert by_emp["R"].attributes["manager"] == [by_emp["M"].mv_id]
    # And so does everyone else (every reference was a placeholder first).
    wrong = [
        emp
        for emp, m in by_emp.items()
        if emp != "M"
        and m.attributes.get("manager") != [by_emp[manager_of[emp].split(",")[0][4:].upper()].mv_id]
    ]
    assert wrong == []
    assert "manager" not in by_emp["M"].attributes or by_emp["M"].attributes["manager"] == []
