"""``idsync join`` / ``disjoin`` / ``release`` as real processes against a running worker on the embedded
broker: MIM's explicit connector and explicit disconnector, end to end."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schemas.state import ConnectorState, CSObject, MVObject
from streams.broker import EmbeddedBroker
from streams.config import load_config
from streams.runtime import Runtime, Settings
from tests.integration.state import restored
from tests.integration.test_follow_ldap import read_topic

pytestmark = pytest.mark.integration

T = TypeVar("T")

CONFIG = """
name: operator
connectors:
  hr: {{kind: csv, path: "{hr}", object_type: employee, anchor: employee_id}}
  app: {{kind: csv, path: "{app}", object_type: account, anchor: account_id}}
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
      - {{mv: mail, source: email}}
  - connector: app
    object_type: account
    mv_type: person
    join: [{{cs: email, mv: mail, normalize: [trim, lower]}}]
    flows:
      - {{mv: appRole, source: role}}
pipeline: {{partitions: 4}}
"""


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


class Env:
    def __init__(self, tmp: Path, bootstrap: str) -> None:
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.hr = tmp / "hr.csv"
        self.app = tmp / "app.csv"
        write(
            self.hr,
            [{"employee_id": "E1", "email": "ada@x.org"}, {"employee_id": "E2", "email": "bob@x.org"}],
        )
        self.set_app(ada_role="admin")
        self.config = tmp / "operator.yaml"
        self.config.write_text(CONFIG.format(hr=self.hr, app=self.app))
        self.rt = Runtime(
            Settings(bootstrap_servers=bootstrap, data_dir=tmp / "rt"), load_config(self.config)
        )
        self.reads = 0

    def set_app(self, ada_role: str) -> None:
        write(
            self.app,
            [
                {"account_id": "A1", "email": "ADA@x.org ", "role": ada_role},
                {"account_id": "A2", "email": "nobody@x.org", "role": "user"},
            ],
        )

    def idsync(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "streams.cli", *args, "-c", str(self.config)]
        cmd += ["--bootstrap-servers", self.bootstrap]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        return proc.stdout

    def state(self) -> tuple[dict[str, CSObject], dict[str, MVObject]]:
        """Connector space (by anchor) and live metaverse (by employeeId), rebuilt from the changelogs."""
        self.reads += 1
        cs, mv = asyncio.run(restored(self.bootstrap, self.rt.config, self.tmp / f"read-{self.reads}"))
        return (
            {o.anchor: o for o in cs if o.deleted_ts_ms is None},
            {
                o.attributes["employeeId"][0]: o
                for o in mv
                if not o.deleted and o.attributes.get("employeeId")
            },
        )

    def until(self, what: str, check: Callable[[dict[str, CSObject], dict[str, MVObject]], T]) -> T:
        """Poll the state until ``check`` returns a true value (the pipeline is asynchronous)."""
        deadline = time.monotonic() + 90
        while True:
            cs, mv = self.state()
            try:
                result = check(cs, mv)
            except KeyError:
                result = None  # type: ignore[assignment]
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: cs={cs} mv={mv}")
            time.sleep(0.5)

    def errors(self) -> list[dict[str, Any]]:
        return read_topic(self.bootstrap, self.rt.names.errors_topic())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with EmbeddedBroker(tmp_path / "broker") as broker:
        e = Env(tmp_path, broker.bootstrap)
        cmd = [sys.executable, "-m", "streams.cli", "worker", "-c", str(e.config)]
        cmd += [
            "--bootstrap-servers",
            broker.bootstrap,
            "--data-dir",
            str(tmp_path / "worker"),
            "--no-export",
        ]
        with (tmp_path / "worker.log").open("ab") as log:
            worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield e
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)


def test_disjoin_join_and_release_through_the_pipeline(env: Env) -> None:
    env.idsync("import", "hr", "--full")
    env.idsync("import", "app", "--full")
    env.until("A1 joined by the rules", lambda cs, mv: mv["E1"].attributes.get("appRole") == ["admin"])
    cs, mv = env.state()
    assert cs["A2"].state == ConnectorState.DISCONNECTOR and cs["A2"].mv_id is None  # matches nobody

    # disjoin: E1 loses the account and its value; A1 is an explicit disconnector
    out = env.idsync("disjoin", "app", "A1")
    assert "explicit disconnector" in out
    # Each stage saves its own state (checkpoints): the two stores are read until both show it.
    cs, mv = env.until(
        "A1 disjoined",
        lambda cs, mv: (
            "app" not in mv["E1"].links
            and cs["A1"].state == ConnectorState.EXPLICIT_DISCONNECTOR
            and (cs, mv)
        ),
    )
    assert cs["A1"].state == ConnectorState.EXPLICIT_DISCONNECTOR and cs["A1"].mv_id is None
    assert "appRole" not in mv["E1"].attributes

    # a later import of A1 changes its values, but the rules do not join it again
    env.set_app(ada_role="owner")
    env.idsync("import", "app", "--full")
    cs, mv = env.until("A1 re-imported", lambda cs, mv: cs["A1"].attributes["role"] == ["owner"] and (cs, mv))
    assert cs["A1"].state == ConnectorState.EXPLICIT_DISCONNECTOR
    assert "app" not in mv["E1"].links and "appRole" not in mv["E1"].attributes

    # join: A2 (whose email matches nobody) becomes an explicit connector of E2
    env.idsync("join", "app", "A2", mv["E2"].mv_id)
    cs, mv = env.until(
        "A2 joined to E2",
        lambda cs, mv: (
            mv["E2"].attributes.get("appRole") == ["user"]
            and cs["A2"].state == ConnectorState.EXPLICIT_CONNECTOR
            and (cs, mv)
        ),
    )
    assert cs["A2"].state == ConnectorState.EXPLICIT_CONNECTOR and cs["A2"].mv_id == mv["E2"].mv_id
    assert mv["E2"].links["app"].anchor == "A2"

    # release: A1 is a normal disconnector again and the rules join it to E1 at once
    env.idsync("release", "app", "A1")
    cs, mv = env.until(
        "A1 released",
        lambda cs, mv: mv["E1"].attributes.get("appRole") == ["owner"] and cs["A1"].mv_id and (cs, mv),
    )
    assert cs["A1"].state == ConnectorState.CONNECTOR and cs["A1"].mv_id == mv["E1"].mv_id

    # refusals are per-object errors, and the pipeline goes on
    env.idsync("disjoin", "app", "A404")
    env.idsync("join", "app", "A2", "no-such-mv-object")
    deadline = time.monotonic() + 60
    while True:
        kinds = {(e["error_type"], e.get("anchor")) for e in env.errors()}
        if {("cs-object-not-found", "A404"), ("explicit-join-target-missing", "A2")} <= kinds:
            break
        assert time.monotonic() < deadline, kinds
        time.sleep(0.5)
    # the refused join left E2 (it asked to) and A2 is a normal disconnector again
    env.until(
        "A2 back to a disconnector",
        lambda cs, mv: cs["A2"].state == ConnectorState.DISCONNECTOR and "app" not in mv["E2"].links,
    )


def test_operator_commands_check_the_connector_name(env: Env) -> None:
    cmd = [sys.executable, "-m", "streams.cli", "disjoin", "nope", "A1", "-c", str(env.config)]
    proc = subprocess.run(
        [*cmd, "--bootstrap-servers", env.bootstrap], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "connector 'nope' is not in the configuration" in proc.stderr
