"""SqlConnector on real PostgreSQL, MariaDB and SQLite: import, deltas, idempotent exports, error mapping.

Each test gets its own sandbox: a fresh PostgreSQL schema / MariaDB database / SQLite file, dropped
afterwards. Row changes made by exports are counted with trigger-fed change tables, the same mechanism
the connector's change-table delta reads.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import GeneratorType
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from connectors import registry
from connectors.base import (
    Checkpoint,
    CursorExpired,
    DeletedObject,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
)
from connectors.ldap.slapd import free_port
from connectors.sql import SqlConnector, SqlConnectorConfig, SqlDeltaConnector, create, map_sql_error
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, PendingExport

pytestmark = pytest.mark.integration

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
DIALECTS = ["postgresql", "mariadb", "sqlite"]

TYPES: dict[str, dict[str, str]] = {
    "postgresql": {
        "pk": "SERIAL PRIMARY KEY",
        "bigpk": "BIGSERIAL PRIMARY KEY",
        "int": "INTEGER",
        "blob": "BYTEA",
        "ts": "TIMESTAMP(6)",
        "text": "TEXT",
    },
    "mariadb": {
        "pk": "INT AUTO_INCREMENT PRIMARY KEY",
        "bigpk": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "int": "INT",
        "blob": "VARBINARY(255)",
        "ts": "DATETIME(6)",
        "text": "VARCHAR(255)",
    },
    "sqlite": {
        "pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "bigpk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "int": "INTEGER",
        "blob": "BLOB",
        "ts": "DATETIME",
        "text": "TEXT",
    },
}

_seq = itertools.count(1)


# =========================================================================== sandbox
@dataclass
class Sandbox:
    """A test's own schema (PostgreSQL), database (MariaDB) or file (SQLite), and an admin engine."""

    dialect: str
    admin: Engine
    url: str
    schema: str | None
    connectors: list[SqlConnector] = field(default_factory=list)

    @property
    def types(self) -> dict[str, str]:
        return TYPES[self.dialect]

    def t(self, name: str) -> str:
        """A table name qualified for raw SQL."""
        return f"{self.schema}.{name}" if self.schema else name

    def run(self, *statements: str) -> None:
        with self.admin.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.admin.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.admin.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def config(self, object_types: dict[str, Any], **fields: Any) -> SqlConnectorConfig:
        types = {
            name: ({"schema": self.schema, **spec} if self.schema and "query" not in spec else spec)
            for name, spec in object_types.items()
        }
        data: dict[str, Any] = {"kind": "sql", "url": self.url, "object_types": types, "connect_timeout_s": 3}
        data.update(fields)
        return SqlConnectorConfig.model_validate(data)

    def connector(self, object_types: dict[str, Any], **fields: Any) -> SqlConnector:
        conn = create("db", self.config(object_types, **fields))
        self.connectors.append(conn)
        return conn

    # ------------------------------------------------------------------ DDL
    def create_people(self, table: str = "people") -> None:
        t = self.types
        self.run(
            f"CREATE TABLE {self.t(table)} (id {t['pk']}, uid VARCHAR(64) NOT NULL UNIQUE, "
            f"title VARCHAR(100), active BOOLEAN, born DATE, photo {t['blob']}, salary NUMERIC(10,2), "
            f"updated_at {t['ts']})"
        )

    def create_aliases(self) -> None:
        self.run(
            f"CREATE TABLE {self.t('aliases')} (person_id {self.types['int']} NOT NULL "
            f"REFERENCES {self.t('people')}(id), alias VARCHAR(100) NOT NULL CHECK (alias <> 'forbidden'))"
        )

    def create_teams(self) -> None:
        t = self.types
        self.run(
            f"CREATE TABLE {self.t('teams')} (id {t['pk']}, name VARCHAR(64) NOT NULL UNIQUE)",
            f"CREATE TABLE {self.t('team_members')} (team_id {t['int']} NOT NULL, "
            "member VARCHAR(100) NOT NULL, PRIMARY KEY (team_id, member))",
        )

    def create_change_table(self, log: str) -> None:
        t = self.types
        self.run(
            f"CREATE TABLE {self.t(log)} (change_id {t['bigpk']}, anchor {t['text']} NOT NULL, "
            "op CHAR(1) NOT NULL)"
        )

    def log_changes(self, table: str, column: str, log: str, fixed_op: str | None = None) -> None:
        """Triggers that write (anchor, op) to ``log`` on every insert/update/delete of ``table``.

        ``fixed_op`` ('U') is for child tables: a member row added or removed updates its owner.
        """
        if self.dialect == "postgresql":
            function = f"{self.schema}.{table}_log"
            new_op = f"'{fixed_op}'" if fixed_op else "left(TG_OP, 1)"
            old_op = f"'{fixed_op}'" if fixed_op else "'D'"
            self.run(
                f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO {self.t(log)} (anchor, op) VALUES (OLD.{column}::text, {old_op});
    RETURN OLD;
  END IF;
  INSERT INTO {self.t(log)} (anchor, op) VALUES (NEW.{column}::text, {new_op});
  RETURN NEW;
END $$""",
                f"CREATE TRIGGER {table}_log AFTER INSERT OR UPDATE OR DELETE ON {self.t(table)} "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()",
            )
            return
        for event, ref, op in (("INSERT", "NEW", "I"), ("UPDATE", "NEW", "U"), ("DELETE", "OLD", "D")):
            op = fixed_op or op
            name = f"{table}_{event.lower()}"
            insert = f"INSERT INTO {self.t(log)} (anchor, op) VALUES ({ref}.{column}, '{op}')"
            if self.dialect == "mariadb":
                self.run(
                    f"CREATE TRIGGER {self.t(name)} AFTER {event} ON {self.t(table)} FOR EACH ROW {insert}"
                )
            else:
                self.run(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {insert}; END")


@contextmanager
def open_sandbox(dialect: str, tmp_path: Path) -> Iterator[Sandbox]:
    """A fresh sandbox, dropped with everything in it afterwards (connectors closed first)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if dialect == "sqlite":
        path = tmp_path / f"{name}.sqlite"
        box = Sandbox(dialect, create_engine(f"sqlite:///{path}"), f"sqlite:///{path}", None)
        try:
            yield box
        finally:
            for c in box.connectors:
                c.close()
            box.admin.dispose()
        return
    admin = create_engine(PG_ADMIN if dialect == "postgresql" else MARIADB_ADMIN)
    create, drop = (
        (f"CREATE SCHEMA {name}", f"DROP SCHEMA {name} CASCADE")
        if dialect == "postgresql"
        else (f"CREATE DATABASE {name}", f"DROP DATABASE {name}")
    )
    with admin.begin() as conn:
        conn.exec_driver_sql(create)
    box = Sandbox(dialect, admin, PG_ADMIN if dialect == "postgresql" else MARIADB_ADMIN, name)
    try:
        yield box
    finally:
        for c in box.connectors:
            c.close()
        with admin.begin() as conn:
            if dialect == "postgresql":
                conn.exec_driver_sql("SET lock_timeout = '10s'")  # fail, not hang, if a test left a lock
            conn.exec_driver_sql(drop)
        admin.dispose()


@pytest.fixture(params=DIALECTS)
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    with open_sandbox(request.param, tmp_path) as box:
        yield box


@pytest.fixture(params=["postgresql", "mariadb"])
def server_sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    with open_sandbox(request.param, tmp_path) as box:
        yield box


# =========================================================================== helpers
PEOPLE = {"table": "people", "anchor": "id"}
PEOPLE_WITH_ALIASES = {
    **PEOPLE,
    "multi_valued": {"alias": {"child_table": "aliases", "child_key": "person_id", "value": "alias"}},
}
TEAMS = {
    "table": "teams",
    "anchor": "id",
    "multi_valued": {"member": {"child_table": "team_members", "child_key": "team_id", "value": "member"}},
}


def pending(op: str, object_type: str = "person", **fields: Any) -> PendingExport:
    n = next(_seq)
    data: dict[str, Any] = {
        "export_id": f"e{n}",
        "seq": n,
        "connector": "db",
        "mv_id": f"mv-{n}",
        "op": op,
        "object_type": object_type,
        "dn": "",
        "ts_ms": 0,
    }
    data.update(fields)
    return PendingExport.model_validate(data)


def replace(**values: list[str]) -> dict[str, AttrChange]:
    return {name: AttrChange(op="replace", values=v) for name, v in values.items()}


def objects(items: list[Any]) -> dict[str, ImportedObject]:
    return {i.anchor: i for i in items if isinstance(i, ImportedObject)}


def by_uid(items: list[Any]) -> dict[str, ImportedObject]:
    return {
        i.attributes["uid"][0]: i for i in items if isinstance(i, ImportedObject) and "uid" in i.attributes
    }


def ts(second: int) -> str:
    return f"2024-05-01 12:00:{second:02d}"


def add_person(box: Sandbox, uid: str, updated: str | None = None, **cols: Any) -> int:
    names = ["uid", *cols, *(["updated_at"] if updated else [])]
    params = {"uid": uid, **cols, **({"updated_at": updated} if updated else {})}
    values = ", ".join(f":{n}" for n in names)
    with box.admin.begin() as conn:
        conn.execute(text(f"INSERT INTO {box.t('people')} ({', '.join(names)}) VALUES ({values})"), params)
        pid = conn.execute(text(f"SELECT id FROM {box.t('people')} WHERE uid = :uid"), {"uid": uid}).scalar()
    assert isinstance(pid, int)
    return pid


def changes(box: Sandbox, log: str = "changes") -> int:
    return int(box.scalar(f"SELECT COUNT(*) FROM {box.t(log)}"))


# =========================================================================== config
def test_config_keeps_the_password_out_of_the_url_and_never_renders_it() -> None:
    cfg = SqlConnectorConfig.model_validate(
        {
            "kind": "sql",
            "url": "postgresql+psycopg://u:hun%40ter2@127.0.0.1/db",
            "object_types": {"p": PEOPLE},
        }
    )
    assert cfg.url == "postgresql+psycopg://u@127.0.0.1/db"  # moved out of the URL, never echoed
    assert cfg.password is not None and cfg.password.get_secret_value() == "hun@ter2"
    cfg = SqlConnectorConfig.model_validate(
        {"kind": "sql", "url": PG_ADMIN, "password": "s3cr3t-pw", "object_types": {"p": PEOPLE}}
    )
    assert "s3cr3t-pw" not in repr(cfg) and "s3cr3t-pw" not in cfg.model_dump_json()
    assert cfg.sqlalchemy_url().password == "s3cr3t-pw"
    assert "s3cr3t-pw" not in cfg.display_url()
    with pytest.raises(ValueError, match="not a SQLAlchemy URL"):
        SqlConnectorConfig.model_validate({"kind": "sql", "url": "not a url", "object_types": {"p": PEOPLE}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"anchor": "id"}, "exactly one of table, query"),
        ({"table": "t", "query": "SELECT 1", "anchor": "id"}, "exactly one of table, query"),
        ({"table": "t", "anchor": "id", "watermark_column": "u", "change_table": "c"}, "at most one of"),
        (
            {
                "table": "t",
                "anchor": "id",
                "columns": {"a": "a"},
                "multi_valued": {"a": {"child_table": "c", "child_key": "k", "value": "v"}},
            },
            "both in columns and in multi_valued",
        ),
    ],
)
def test_config_validation_messages(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlConnectorConfig.model_validate(
            {"kind": "sql", "url": "sqlite:///x.db", "object_types": {"p": spec}}
        )


def test_delta_needs_a_source_on_every_object_type() -> None:
    base = {"kind": "sql", "url": "sqlite:///x.db"}
    with pytest.raises(ValueError, match=r"\['team'\] have neither"):
        SqlConnectorConfig.model_validate(
            {**base, "object_types": {"person": {**PEOPLE, "change_table": "c"}, "team": TEAMS}}
        )
    cfg = SqlConnectorConfig.model_validate(
        {
            **base,
            "object_types": {
                "person": {**PEOPLE, "change_table": "c"},
                "team": {**TEAMS, "change_table": "c"},
            },
        }
    )
    assert cfg.object_types["person"].change_table is not None
    assert cfg.object_types["person"].change_table.table == "c"
    assert isinstance(create("db", cfg), SqlDeltaConnector)
    plain = create("db", SqlConnectorConfig.model_validate({**base, "object_types": {"p": PEOPLE}}))
    assert not isinstance(plain, SqlDeltaConnector) and not hasattr(plain, "delta_import")


def test_kind_is_registered_by_entry_point() -> None:
    kinds = registry.load()
    assert kinds["sql"].config_model is SqlConnectorConfig


# =========================================================================== full import
def test_full_import_values_nulls_and_child_table_values(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_aliases()
    alice = add_person(
        sandbox, "alice", ts(5), title="Engineer", active=True, born="1990-02-03", photo=b"\x00\xff\x10",
        salary="1234.5",
    )  # fmt: skip
    bob = add_person(sandbox, "bob", title="", active=False)
    carol = add_person(sandbox, "carol")
    sandbox.run(
        f"INSERT INTO {sandbox.t('aliases')} (person_id, alias) VALUES "
        f"({alice}, 'al'), ({alice}, 'ally'), ({carol}, 'caz'), ({alice}, 'al')"
    )
    # batch_size 2: three rows cross a fetch boundary, and each batch reads its child values on its own
    conn = sandbox.connector({"person": PEOPLE_WITH_ALIASES}, batch_size=2)
    items = list(conn.full_import())
    assert all(isinstance(i, ImportedObject) for i in items)
    got = objects(items)
    assert list(got) == [str(alice), str(bob), str(carol)]
    a = got[str(alice)]
    assert a.object_type == "person" and a.dn is None
    assert a.locator == f"{sandbox.t('people')}:{alice}"
    assert a.attributes == {
        "id": [str(alice)],
        "uid": ["alice"],
        "title": ["Engineer"],
        "active": ["true"],
        "born": ["1990-02-03"],
        "photo": ["AP8Q"],  # base64
        "salary": ["1234.50"],
        "updated_at": ["2024-05-01T12:00:05"],
        "alias": ["al", "ally"],  # duplicate child rows are one value
    }
    # NULL and '' are no value; False is "false"
    assert got[str(bob)].attributes == {"id": [str(bob)], "uid": ["bob"], "active": ["false"]}
    assert got[str(carol)].attributes == {"id": [str(carol)], "uid": ["carol"], "alias": ["caz"]}


def test_full_import_maps_columns_to_attribute_names(sandbox: Sandbox) -> None:
    sandbox.create_people()
    pid = add_person(sandbox, "alice", title="Engineer")
    conn = sandbox.connector(
        {"person": {**PEOPLE, "columns": {"accountName": "uid", "jobTitle": "title", "employeeId": "id"}}}
    )
    (item,) = list(conn.full_import())
    assert isinstance(item, ImportedObject)
    assert item.anchor == str(pid)
    assert item.attributes == {"accountName": ["alice"], "jobTitle": ["Engineer"], "employeeId": [str(pid)]}


def test_a_row_without_anchor_is_an_import_failure_not_fatal(sandbox: Sandbox) -> None:
    sandbox.create_people()
    add_person(sandbox, "alice", title="E-1")
    add_person(sandbox, "nobody")
    add_person(sandbox, "bob", title="E-2")
    conn = sandbox.connector({"person": {"table": "people", "anchor": "title", "columns": {"uid": "uid"}}})
    items = list(conn.full_import())
    failures = [i for i in items if isinstance(i, ImportFailure)]
    assert sorted(objects(items)) == ["E-1", "E-2"]
    assert len(failures) == 1
    assert failures[0].error_type == "import-missing-anchor"
    assert "title" in failures[0].message and "'nobody'" in (failures[0].raw or "")


def test_full_import_of_a_query_is_read_only(sandbox: Sandbox) -> None:
    sandbox.create_people()
    pid = add_person(sandbox, "alice", title="Engineer")
    add_person(sandbox, "bob", title="Intern")
    query = f"SELECT id AS person_id, uid, title FROM {sandbox.t('people')} WHERE title <> 'Intern'"
    conn = sandbox.connector({"staff": {"query": query, "anchor": "person_id"}})
    conn.test_connection()
    (item,) = list(conn.full_import())
    assert isinstance(item, ImportedObject)
    assert item.anchor == str(pid) and item.object_type == "staff"
    assert item.attributes == {"person_id": [str(pid)], "uid": ["alice"], "title": ["Engineer"]}
    with pytest.raises(DataError) as err:
        conn.apply(pending("update", "staff", anchor=str(pid), attributes=replace(title=["x"])))
    assert err.value.error_type == "read-only-object-type"


def test_delta_of_a_query_through_a_change_table(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_change_table("changes")
    sandbox.log_changes("people", "id", "changes")
    a = add_person(sandbox, "a", title="Engineer")
    b = add_person(sandbox, "b", title="Engineer")
    query = f"SELECT id, uid, title FROM {sandbox.t('people')} WHERE title IS NOT NULL"
    conn = sandbox.connector({"staff": {"query": query, "anchor": "id", "change_table": {
        "table": "changes", "schema": sandbox.schema}}})  # fmt: skip
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()
    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = 'Lead' WHERE id = {a}")
    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = NULL WHERE id = {b}")  # leaves the query's scope
    items = list(conn.delta_import(mark))
    assert [(i.anchor, i.attributes["title"]) for i in items if isinstance(i, ImportedObject)] == [
        (str(a), ["Lead"])
    ]
    assert [i.anchor for i in items if isinstance(i, DeletedObject)] == [str(b)]


def test_full_import_streams_through_a_server_side_cursor(tmp_path: Path) -> None:
    with open_sandbox("postgresql", tmp_path) as box:
        box.create_people()
        for i in range(7):
            add_person(box, f"u{i}")
        conn = box.connector({"person": PEOPLE}, batch_size=2)
        items = conn.full_import()
        assert isinstance(items, GeneratorType)
        try:
            first = next(items)
            assert isinstance(first, ImportedObject)
            # While the import is paused after its first object, its session is fetching rows from a
            # server-side cursor (DECLARE ... / FETCH FORWARD n), not holding the result set in memory.
            sql = "SELECT query FROM pg_stat_activity WHERE application_name = 'idsync-db'"
            queries = [r[0] for r in box.rows(sql)]
            assert any(q.startswith("FETCH FORWARD") for q in queries), queries
            assert len([first, *items]) == 7
        finally:
            items.close()


# =========================================================================== delta: watermark column
def test_watermark_delta_keeps_same_timestamp_ties(sandbox: Sandbox) -> None:
    sandbox.create_people()
    a = add_person(sandbox, "a", ts(10))
    b = add_person(sandbox, "b", ts(10))
    add_person(sandbox, "old", ts(1))
    conn = sandbox.connector({"person": {**PEOPLE, "watermark_column": "updated_at"}})
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()

    # A row committed after the watermark was taken but stamped with the same time, and a later change.
    c = add_person(sandbox, "c", ts(10))
    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = 'T', updated_at = '{ts(20)}' WHERE id = {a}")
    items = list(conn.delta_import(mark))
    assert isinstance(items[-1], Checkpoint)
    assert sorted(objects(items)) == sorted([str(c), str(a)])  # not b (read at the boundary), not old
    assert objects(items)[str(a)].attributes["title"] == ["T"]

    last = items[-1].watermark
    again = list(conn.delta_import(last))
    assert [i for i in again if not isinstance(i, Checkpoint)] == []
    d = add_person(sandbox, "d", ts(20))  # tie with the new boundary value
    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = 'B' WHERE id = {b}")  # no new timestamp: unseen
    assert list(objects(list(conn.delta_import(last)))) == [str(d)]


def test_watermark_delta_resumes_from_any_checkpoint(sandbox: Sandbox) -> None:
    sandbox.create_people()
    conn = sandbox.connector(
        {"person": {**PEOPLE, "watermark_column": "updated_at"}}, batch_size=1, checkpoint_every=1
    )
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()  # empty table
    for i in range(5):
        add_person(sandbox, f"u{i}", ts(30) if i < 3 else ts(31 + i))
    items = list(conn.delta_import(mark))
    order = [i.anchor for i in items if isinstance(i, ImportedObject)]
    assert len(order) == 5
    seen_before = 0
    for item in items:
        if isinstance(item, ImportedObject):
            seen_before += 1
        elif isinstance(item, Checkpoint):
            rest = [i.anchor for i in conn.delta_import(item.watermark) if isinstance(i, ImportedObject)]
            assert rest == order[seen_before:], f"resumed after {seen_before}"


def test_delta_from_no_watermark_starts_now_and_a_foreign_watermark_is_cursor_expired(
    sandbox: Sandbox,
) -> None:
    sandbox.create_people()
    add_person(sandbox, "a", ts(1))
    conn = sandbox.connector({"person": {**PEOPLE, "watermark_column": "updated_at"}})
    assert isinstance(conn, SqlDeltaConnector)
    (only,) = list(conn.delta_import(None))
    assert isinstance(only, Checkpoint) and only.watermark == conn.current_watermark()
    for bad in ("not json", '{"v": 1, "types": {}}', '{"v":1,"types":{"person":{"mode":"changes","hi":1}}}'):
        with pytest.raises(CursorExpired):
            list(conn.delta_import(bad))


# =========================================================================== delta: change table
def test_change_table_delta_sees_updates_deletes_and_member_changes(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_teams()
    sandbox.create_change_table("changes")
    sandbox.create_change_table("team_changes")
    sandbox.log_changes("people", "id", "changes")
    sandbox.log_changes("teams", "id", "team_changes")
    sandbox.log_changes("team_members", "team_id", "team_changes", fixed_op="U")
    a = add_person(sandbox, "a")
    b = add_person(sandbox, "b")
    keep = add_person(sandbox, "keep")
    sandbox.run(f"INSERT INTO {sandbox.t('teams')} (name) VALUES ('ops')")
    team = sandbox.scalar(f"SELECT id FROM {sandbox.t('teams')}")
    sandbox.run(
        f"INSERT INTO {sandbox.t('team_members')} (team_id, member) VALUES ({team}, 'a'), ({team}, 'b')"
    )
    conn = sandbox.connector(
        {
            "person": {**PEOPLE, "change_table": "changes"},
            "team": {**TEAMS, "change_table": {"table": "team_changes"}},
        }
    )
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()

    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = 'x' WHERE id = {a}")
    sandbox.run(f"UPDATE {sandbox.t('people')} SET title = 'y' WHERE id = {a}")  # collapsed with the first
    sandbox.run(f"DELETE FROM {sandbox.t('people')} WHERE id = {b}")
    c = add_person(sandbox, "c")
    sandbox.run(f"DELETE FROM {sandbox.t('team_members')} WHERE member = 'b'")
    items = list(conn.delta_import(mark))

    assert isinstance(items[-1], Checkpoint)
    people = objects([i for i in items if getattr(i, "object_type", None) == "person"])
    teams = objects([i for i in items if getattr(i, "object_type", None) == "team"])
    assert set(people) == {str(a), str(c)} and str(keep) not in people
    assert people[str(a)].attributes["title"] == ["y"]
    assert list(teams) == [str(team)] and teams[str(team)].attributes["member"] == ["a"]
    deletes = [i for i in items if isinstance(i, DeletedObject)]
    assert [(d.anchor, d.object_type) for d in deletes] == [(str(b), "person")]
    assert [i for i in conn.delta_import(items[-1].watermark) if not isinstance(i, Checkpoint)] == []


def test_change_table_sees_a_change_committed_late_with_a_lower_id(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_change_table("changes")
    a = add_person(sandbox, "a")
    b = add_person(sandbox, "b")
    log = sandbox.t("changes")
    sandbox.run(f"INSERT INTO {log} (change_id, anchor, op) VALUES (10, '{a}', 'I')")
    conn = sandbox.connector({"person": {**PEOPLE, "change_table": "changes"}})
    assert isinstance(conn, SqlDeltaConnector)
    first = list(conn.delta_import(conn.current_watermark()))
    assert [i for i in first if not isinstance(i, Checkpoint)] == []
    assert isinstance(first[-1], Checkpoint)
    # A concurrent transaction took id 8 before id 10 but committed only now.
    sandbox.run(f"INSERT INTO {log} (change_id, anchor, op) VALUES (8, '{b}', 'U')")
    items = list(conn.delta_import(first[-1].watermark))
    assert list(objects(items)) == [str(b)]
    assert isinstance(items[-1], Checkpoint)
    assert [i for i in conn.delta_import(items[-1].watermark) if not isinstance(i, Checkpoint)] == []


def test_change_table_purged_past_the_watermark_is_cursor_expired(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_change_table("changes")
    sandbox.log_changes("people", "id", "changes")
    add_person(sandbox, "a")
    conn = sandbox.connector({"person": {**PEOPLE, "change_table": "changes"}})
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()
    add_person(sandbox, "b")
    add_person(sandbox, "c")
    sandbox.run(f"DELETE FROM {sandbox.t('changes')} WHERE change_id <= 2")  # purged before it was read
    with pytest.raises(CursorExpired, match="purged"):
        list(conn.delta_import(mark))


def test_change_table_rows_without_anchor_or_with_a_bad_op_are_failures(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_change_table("changes")
    conn = sandbox.connector({"person": {**PEOPLE, "change_table": "changes"}})
    assert isinstance(conn, SqlDeltaConnector)
    mark = conn.current_watermark()
    a = add_person(sandbox, "a")
    sandbox.run(
        f"INSERT INTO {sandbox.t('changes')} (anchor, op) VALUES ('', 'U'), ('{a}', 'X'), ('{a}', 'u')"
    )
    items = list(conn.delta_import(mark))
    failures = sorted(i.error_type for i in items if isinstance(i, ImportFailure))
    assert failures == ["change-table-bad-op", "import-missing-anchor"]
    assert list(objects(items)) == [str(a)]


# =========================================================================== export
def test_export_add_update_delete_are_idempotent(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_aliases()
    conn = sandbox.connector({"person": PEOPLE_WITH_ALIASES})
    add = pending(
        "add",
        attributes=replace(
            uid=["alice"], title=["Engineer"], active=["true"], born=["1990-02-03"], photo=["base64:AP8Q"],
            salary=["12.5"], updated_at=["2024-05-01T12:00:05+02:00"], alias=["al", "ally"],
        ),
    )  # fmt: skip
    outcome = conn.apply(add)
    assert outcome.anchor is not None and outcome.actions == () and outcome.dn is None
    pid = int(outcome.anchor)
    assert sandbox.scalar(f"SELECT uid FROM {sandbox.t('people')} WHERE id = {pid}") == "alice"
    (image,) = list(conn.full_import())
    assert isinstance(image, ImportedObject)
    assert image.attributes == {
        "id": [str(pid)],
        "uid": ["alice"],
        "title": ["Engineer"],
        "active": ["true"],
        "born": ["1990-02-03"],
        "photo": ["AP8Q"],
        "salary": ["12.50"],
        "updated_at": ["2024-05-01T10:00:05"],  # an offset is converted to UTC for a column without zones
        "alias": ["al", "ally"],
    }

    again = conn.apply(add)  # re-delivered: the uid's unique key finds the row
    assert again == ExportOutcome(anchor=str(pid), dn=None, actions=("converted-add-to-update",))
    assert sandbox.scalar(f"SELECT COUNT(*) FROM {sandbox.t('people')}") == 1
    assert sandbox.scalar(f"SELECT COUNT(*) FROM {sandbox.t('aliases')}") == 2

    update = pending(
        "update",
        anchor=str(pid),
        attributes={
            "title": AttrChange(op="replace", values=["Lead"]),
            "born": AttrChange(op="delete", values=[]),
            "active": AttrChange(op="delete", values=["false"]),  # holds true: nothing to delete
            "alias": AttrChange(op="delete", values=["al"]),
        },
    )
    assert conn.apply(update).anchor == str(pid)
    conn.apply(update)
    row = sandbox.rows(f"SELECT title, born, active FROM {sandbox.t('people')} WHERE id = {pid}")[0]
    assert (row[0], row[1], bool(row[2])) == ("Lead", None, True)
    assert [r[0] for r in sandbox.rows(f"SELECT alias FROM {sandbox.t('aliases')}")] == ["ally"]

    delete = pending("delete", anchor=str(pid))
    assert conn.apply(delete).actions == ()
    assert sandbox.scalar(f"SELECT COUNT(*) FROM {sandbox.t('people')}") == 0
    assert sandbox.scalar(f"SELECT COUNT(*) FROM {sandbox.t('aliases')}") == 0  # child rows first
    assert conn.apply(delete).actions == ("already-deleted",)

    with pytest.raises(DataError) as err:
        conn.apply(update)
    assert err.value.error_type == "cd-missing-object"


def test_add_with_the_anchor_in_the_export_and_converted_add(sandbox: Sandbox) -> None:
    sandbox.run(f"CREATE TABLE {sandbox.t('staff')} (employee_id VARCHAR(20) PRIMARY KEY, name VARCHAR(50))")
    conn = sandbox.connector({"staff": {"table": "staff", "anchor": "employee_id", "columns": {
        "employeeId": "employee_id", "displayName": "name"}}})  # fmt: skip
    first = conn.apply(pending("add", "staff", attributes=replace(employeeId=["E1"], displayName=["Ann"])))
    assert first == ExportOutcome(anchor="E1", dn=None)
    # The object already exists (added out of band): MIM converts the add into an update.
    sandbox.run(f"INSERT INTO {sandbox.t('staff')} (employee_id, name) VALUES ('E2', 'Old')")
    second = conn.apply(pending("add", "staff", anchor="E2", attributes=replace(displayName=["New"])))
    assert second == ExportOutcome(anchor="E2", dn=None, actions=("converted-add-to-update",))
    assert sandbox.scalar(f"SELECT name FROM {sandbox.t('staff')} WHERE employee_id = 'E2'") == "New"
    with pytest.raises(DataError) as err:
        conn.apply(pending("update", "staff", anchor="E1", attributes=replace(employeeId=["E9"])))
    assert err.value.error_type == "anchor-immutable"
    # Without an anchor, an update or delete finds the row by the PendingExport's dn (the anchor value).
    conn.apply(pending("update", "staff", dn="E1", attributes=replace(displayName=["Anne"])))
    assert sandbox.scalar(f"SELECT name FROM {sandbox.t('staff')} WHERE employee_id = 'E1'") == "Anne"


def test_value_level_change_of_a_20000_member_group_touches_one_row(sandbox: Sandbox) -> None:
    sandbox.create_teams()
    sandbox.create_change_table("team_changes")
    sandbox.run(f"INSERT INTO {sandbox.t('teams')} (name) VALUES ('all-staff')")
    team = int(sandbox.scalar(f"SELECT id FROM {sandbox.t('teams')}"))
    with sandbox.admin.begin() as db:
        db.execute(
            text(f"INSERT INTO {sandbox.t('team_members')} (team_id, member) VALUES (:t, :m)"),
            [{"t": team, "m": f"user{i:05d}"} for i in range(20_000)],
        )
    # Logged from now on: every member row inserted or deleted is one change row.
    sandbox.log_changes("team_members", "team_id", "team_changes", fixed_op="U")
    conn = sandbox.connector({"team": {**TEAMS, "change_table": "team_changes"}})
    members = f"SELECT COUNT(*) FROM {sandbox.t('team_members')}"

    conn.apply(
        pending(
            "update", "team", anchor=str(team), attributes={"member": AttrChange(op="add", values=["new1"])}
        )
    )
    assert (sandbox.scalar(members), changes(sandbox, "team_changes")) == (20_001, 1)
    conn.apply(pending("update", "team", anchor=str(team), attributes={
        "member": AttrChange(op="delete", values=["user00007"])}))  # fmt: skip
    assert (sandbox.scalar(members), changes(sandbox, "team_changes")) == (20_000, 2)
    # Re-delivered: nothing to add or delete, no row touched.
    conn.apply(
        pending(
            "update", "team", anchor=str(team), attributes={"member": AttrChange(op="add", values=["new1"])}
        )
    )
    assert changes(sandbox, "team_changes") == 2
    # A replace with the full list writes only the difference (one delete, one insert).
    full = [f"user{i:05d}" for i in range(20_000) if i != 7 and i != 8] + ["new1", "new2"]
    conn.apply(
        pending(
            "update", "team", anchor=str(team), attributes={"member": AttrChange(op="replace", values=full)}
        )
    )
    assert (sandbox.scalar(members), changes(sandbox, "team_changes")) == (20_000, 4)
    (image,) = [i for i in conn.full_import() if isinstance(i, ImportedObject)]
    assert len(image.attributes["member"]) == 20_000
    assert "user00008" not in image.attributes["member"] and "new2" in image.attributes["member"]


def test_batch_export_isolates_a_failing_export_with_savepoints(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_aliases()
    existing = add_person(sandbox, "existing", title="before")
    add_person(sandbox, "other")
    conn = sandbox.connector({"person": PEOPLE_WITH_ALIASES})
    batch = [
        pending("add", attributes=replace(uid=["ok1"])),
        pending("add", attributes=replace(title=["no uid"])),  # NOT NULL: constraint-violation
        pending("update", anchor=str(existing), attributes=replace(born=["not-a-date"])),  # schema-violation
        pending("update", anchor="424242", attributes=replace(title=["x"])),  # cd-missing-object
        pending("add", attributes=replace(uid=["ok2"], nosuch=["x"])),  # unknown attribute
        # The UPDATE of title succeeds, then the alias row breaks a CHECK: the savepoint undoes both.
        pending("update", anchor=str(existing), attributes=replace(title=["half"], alias=["forbidden"])),
        pending("update", anchor=str(existing), attributes=replace(uid=["other"])),  # unique, in an UPDATE
        pending("update", anchor=str(existing), attributes=replace(alias=["fine"])),
        pending("delete", object_type="nosuchtype", anchor="1"),
    ]
    results = conn.apply_batch(batch)
    assert len(results) == len(batch)
    kinds = [r.error_type if isinstance(r, IdsyncError) else "ok" for r in results]
    assert kinds == [
        "ok",
        "constraint-violation",
        "schema-violation",
        "cd-missing-object",
        "schema-violation",
        "constraint-violation",
        "constraint-violation",
        "ok",
        "unknown-object-type",
    ]
    assert all(isinstance(r, DataError) for r in results if isinstance(r, IdsyncError))
    uids = sorted(r[0] for r in sandbox.rows(f"SELECT uid FROM {sandbox.t('people')}"))
    assert uids == ["existing", "ok1", "other"]
    assert sandbox.scalar(f"SELECT title FROM {sandbox.t('people')} WHERE id = {existing}") == "before"
    assert [r[0] for r in sandbox.rows(f"SELECT alias FROM {sandbox.t('aliases')}")] == ["fine"]
    assert conn.apply_batch([]) == []


def test_batch_export_is_rolled_back_whole_when_the_connection_drops(tmp_path: Path) -> None:
    with open_sandbox("postgresql", tmp_path) as box:
        box.create_people()
        # A trigger that ends its own session when a poisoned uid is written: a connection drop mid-batch.
        box.run(
            f"""CREATE FUNCTION {box.schema}.poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.uid = 'poison' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
  RETURN NEW;
END $$""",
            f"CREATE TRIGGER poison BEFORE INSERT ON {box.t('people')} FOR EACH ROW EXECUTE FUNCTION "
            f"{box.schema}.poison()",
        )
        conn = box.connector({"person": PEOPLE})
        batch = [pending("add", attributes=replace(uid=[u])) for u in ("before", "poison", "after")]
        results = conn.apply_batch(batch)
        assert all(isinstance(r, RetriableError) for r in results), results
        assert [r.error_type for r in results if isinstance(r, IdsyncError)] == ["cd-connection-failure"] * 3
        assert "rolled back" in str(results[0]) and "before" not in str(results[1])
        assert box.scalar(f"SELECT COUNT(*) FROM {box.t('people')}") == 0  # nothing half-applied
        # The pool recovers: the next batch applies.
        assert all(isinstance(r, ExportOutcome) for r in conn.apply_batch([batch[0], batch[2]]))
        assert box.scalar(f"SELECT COUNT(*) FROM {box.t('people')}") == 2


def test_rename_without_and_with_a_dn_column(sandbox: Sandbox) -> None:
    sandbox.run(
        f"CREATE TABLE {sandbox.t('accounts')} "
        "(id VARCHAR(10) PRIMARY KEY, dn VARCHAR(200), mail VARCHAR(50))",
        f"INSERT INTO {sandbox.t('accounts')} (id, dn) VALUES ('a1', 'cn=A,ou=x')",
    )
    plain = sandbox.connector({"account": {"table": "accounts", "anchor": "id"}})
    out = plain.apply(pending("rename", "account", anchor="a1", dn="cn=A,ou=x", new_dn="cn=B,ou=x"))
    assert out.actions == ("rename-not-applicable",)
    out = plain.apply(
        pending("rename", "account", anchor="a1", dn="a1", new_dn="b1", attributes=replace(mail=["a@x"]))
    )
    assert out.anchor == "a1" and out.actions == ("rename-not-applicable",)
    assert sandbox.rows(f"SELECT dn, mail FROM {sandbox.t('accounts')}") == [("cn=A,ou=x", "a@x")]

    with_dn = sandbox.connector({"account": {"table": "accounts", "anchor": "id", "dn_column": "dn"}})
    (before,) = list(with_dn.full_import())
    assert isinstance(before, ImportedObject) and before.dn == "cn=A,ou=x"
    rename = pending("rename", "account", dn="cn=A,ou=x", new_dn="cn=B,ou=y")  # located by the DN column
    assert with_dn.apply(rename) == ExportOutcome(anchor="a1", dn="cn=B,ou=y")
    assert with_dn.apply(rename) == ExportOutcome(anchor="a1", dn="cn=B,ou=y")  # re-delivered
    assert sandbox.scalar(f"SELECT dn FROM {sandbox.t('accounts')}") == "cn=B,ou=y"
    added = with_dn.apply(pending("add", "account", anchor="a2", dn="cn=C,ou=x"))
    assert added == ExportOutcome(anchor="a2", dn="cn=C,ou=x")


# =========================================================================== schema, errors
def test_discover_schema_from_reflection(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_aliases()
    conn = sandbox.connector({"person": PEOPLE_WITH_ALIASES})
    schema = conn.discover_schema()
    person = schema.object_type("person")
    assert person is not None and person.anchor == "id"
    attrs = {a.name: a for a in person.attributes}
    assert {n: a.syntax for n, a in attrs.items()} == {
        "id": "integer", "uid": "string", "title": "string", "active": "boolean", "born": "datetime",
        "photo": "binary", "salary": "string", "updated_at": "datetime", "alias": "string",
    }  # fmt: skip
    assert attrs["uid"].required and not attrs["title"].required and not attrs["id"].required
    assert attrs["alias"].multi_valued and not attrs["uid"].multi_valued


def test_missing_table_or_column_is_fatal_at_start(sandbox: Sandbox) -> None:
    sandbox.create_people()
    conn = sandbox.connector({"person": {"table": "nosuch", "anchor": "id"}})
    with pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-table" and "nosuch" in str(err.value)
    with pytest.raises(FatalError) as err:
        list(conn.full_import())
    assert err.value.error_type == "no-start-bad-table"
    conn = sandbox.connector({"person": {**PEOPLE, "columns": {"mail": "email"}}})
    with pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-column"
    assert "'email'" in str(err.value) and "uid" in str(err.value)  # names what is there


def test_value_errors_map_to_schema_and_constraint_violations(sandbox: Sandbox) -> None:
    sandbox.create_people()
    sandbox.create_aliases()
    pid = add_person(sandbox, "alice")
    add_person(sandbox, "bob")
    conn = sandbox.connector({"person": PEOPLE_WITH_ALIASES})
    cases: list[tuple[PendingExport, str]] = [
        (pending("update", anchor=str(pid), attributes=replace(salary=["lots"])), "schema-violation"),
        (pending("update", anchor=str(pid), attributes=replace(title=["a", "b"])), "schema-violation"),
        (pending("update", anchor=str(pid), attributes=replace(uid=["bob"])), "constraint-violation"),
        (pending("update", anchor=str(pid), attributes=replace(salary=["123456789012"])), "schema-violation"),
    ]
    if sandbox.dialect != "sqlite":  # SQLite stores any length in a VARCHAR(64)
        cases.append(
            (pending("update", anchor=str(pid), attributes=replace(uid=["x" * 65])), "schema-violation")
        )
    for export, error_type in cases:
        if sandbox.dialect == "sqlite" and export.attributes.get("salary") == AttrChange(
            op="replace", values=["123456789012"]
        ):
            continue  # nor does it check NUMERIC precision
        with pytest.raises(DataError) as err:
            conn.apply(export)
        assert err.value.error_type == error_type, (export.attributes, err.value)
        assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    # The failed exports left the row as it was.
    assert sandbox.rows(f"SELECT uid, salary FROM {sandbox.t('people')} WHERE id = {pid}") == [
        ("alice", None)
    ]


def test_a_row_locked_elsewhere_is_retriable_busy_after_lock_timeout(sandbox: Sandbox) -> None:
    sandbox.create_people()
    pid = add_person(sandbox, "alice")
    conn = sandbox.connector({"person": PEOPLE}, lock_timeout_s=0.5)
    conn.test_connection()
    update = pending("update", anchor=str(pid), attributes=replace(title=["x"]))
    if sandbox.dialect == "sqlite":
        holder = sqlite3.connect(sandbox.url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the database-wide write lock
        release = holder.close
    else:
        held = sandbox.admin.connect()
        held.begin()
        held.execute(text(f"UPDATE {sandbox.t('people')} SET title = 'held' WHERE id = {pid}"))
        release = held.close  # rolls back
    try:
        started = time.monotonic()
        with pytest.raises(RetriableError) as err:
            conn.apply(update)
        assert err.value.error_type == "cd-busy"
        assert time.monotonic() - started < 10
    finally:
        release()
    conn.apply(update)  # once the lock is gone, the same export applies
    assert sandbox.scalar(f"SELECT title FROM {sandbox.t('people')} WHERE id = {pid}") == "x"


def test_a_real_deadlock_maps_to_retriable(server_sandbox: Sandbox) -> None:
    """Two sessions lock two rows in opposite orders; the server picks a victim: retriable cd-deadlock."""
    box = server_sandbox
    box.create_people()
    one, two = add_person(box, "one"), add_person(box, "two")
    table = box.t("people")
    barrier = threading.Barrier(2, timeout=20)
    caught: list[BaseException] = []

    def worker(first: int, second: int) -> None:
        try:
            with box.admin.begin() as conn:
                conn.execute(text(f"UPDATE {table} SET title = 'a' WHERE id = {first}"))
                barrier.wait()
                conn.execute(text(f"UPDATE {table} SET title = 'b' WHERE id = {second}"))
        except SQLAlchemyError as exc:
            caught.append(exc)

    threads = [threading.Thread(target=worker, args=args) for args in ((one, two), (two, one))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(caught) == 1, caught
    error = map_sql_error(caught[0], operation="update", subject=table, url=box.url)
    assert isinstance(error, RetriableError) and error.error_type == "cd-deadlock", error
    assert "\n" not in str(error) and "UPDATE" not in str(error)  # no SQL text in the message


def test_unreachable_server_is_retriable(server_sandbox: Sandbox) -> None:
    box = server_sandbox
    port = free_port()
    url = box.url.replace(":5432/", f":{port}/").replace(":3306/", f":{port}/")
    conn = box.connector({"person": PEOPLE}, url=url, password="never-shown-pw", connect_timeout_s=2)
    for call in (conn.test_connection, lambda: list(conn.full_import())):
        with pytest.raises(RetriableError) as err:
            call()
        assert err.value.error_type == "no-start-connection"
        assert f"127.0.0.1:{port}" in str(err.value) and "never-shown-pw" not in str(err.value)
    with pytest.raises(RetriableError) as err:
        conn.apply(pending("delete", anchor="1"))
    assert "never-shown-pw" not in str(err.value)


def test_wrong_password_is_fatal_credentials_and_never_echoed(tmp_path: Path) -> None:
    """MariaDB checks passwords here (PostgreSQL runs with trust auth on 127.0.0.1: see the next test)."""
    with open_sandbox("mariadb", tmp_path) as box:
        box.create_people()
        user, password = f"u_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
        box.run(
            f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'",
            f"GRANT ALL ON {box.schema}.* TO '{user}'@'127.0.0.1'",
        )
        try:
            url = f"mysql+pymysql://{user}@127.0.0.1:3306/{box.schema}"
            good = box.connector({"person": {**PEOPLE, "schema": None}}, url=url, password=password)
            good.test_connection()  # the password is injected into the URL and accepted
            assert list(good.full_import()) == []
            wrong = "wrong-" + password
            bad = box.connector({"person": PEOPLE}, url=url, password=wrong)
            for call in (bad.test_connection, lambda: list(bad.full_import()), bad.discover_schema):
                with pytest.raises(FatalError) as err:
                    call()
                assert err.value.error_type == "no-start-credentials"
                assert wrong not in str(err.value) and password not in str(err.value)
                assert user in str(err.value)
        finally:
            box.run(f"DROP USER '{user}'@'127.0.0.1'")


def test_postgres_unknown_role_is_fatal_credentials(tmp_path: Path) -> None:
    with open_sandbox("postgresql", tmp_path) as box:
        url = "postgresql+psycopg://idsync_no_such_role@127.0.0.1:5432/test"
        conn = box.connector({"person": PEOPLE}, url=url, password="pg-secret-value")
        with pytest.raises(FatalError) as err:
            conn.test_connection()
        assert err.value.error_type == "no-start-credentials"
        assert "pg-secret-value" not in str(err.value) and "idsync_no_such_role" in str(err.value)


def test_missing_database_is_fatal(server_sandbox: Sandbox, tmp_path: Path) -> None:
    box = server_sandbox
    conn = box.connector({"person": PEOPLE}, url=box.url.replace("/test", "/idsync_no_such_db"))
    with pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-database"
    missing = tmp_path / "no" / "such" / "dir" / "x.sqlite"
    lite = create("db", SqlConnectorConfig.model_validate(
        {"kind": "sql", "url": f"sqlite:///{missing}", "object_types": {"p": PEOPLE}}))  # fmt: skip
    try:
        with pytest.raises(FatalError) as err:
            lite.test_connection()
        assert err.value.error_type == "no-start-bad-database"
    finally:
        lite.close()


def test_unknown_driver_is_fatal_without_echoing_the_password() -> None:
    cfg = SqlConnectorConfig.model_validate(
        {
            "kind": "sql",
            "url": "nosuchdb+nodriver://u@127.0.0.1/x",
            "password": "pw-123",
            "object_types": {"p": PEOPLE},
        }
    )
    conn = create("db", cfg)
    with pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-url" and "pw-123" not in str(err.value)


def test_values_round_trip_through_typed_columns(sandbox: Sandbox) -> None:
    """What an export writes, the next import reads back identically (export confirmation needs that)."""
    sandbox.create_people()
    conn = sandbox.connector({"person": PEOPLE})
    values = {
        "uid": ["zoë ünïcode"],
        "title": ["a 'quoted' title; DROP TABLE x"],
        "active": ["false"],
        "born": ["2001-12-31"],
        "photo": ["3q2+7w=="],
        "salary": ["99999999.99"],
        "updated_at": [dt.datetime(2024, 2, 29, 23, 59, 58, 123456).isoformat()],
    }
    out = conn.apply(pending("add", attributes=replace(**values)))
    (image,) = list(conn.full_import())
    assert isinstance(image, ImportedObject)
    assert image.attributes == {"id": [out.anchor], **values}
