"""The conformance suite on the SQL connector: PostgreSQL, MariaDB and SQLite, each in its own sandbox.

PostgreSQL and SQLite use a trigger-fed change table (deltas see deletes); MariaDB a watermark column
maintained by ``ON UPDATE CURRENT_TIMESTAMP(6)`` (deltas cannot see deletes, as documented). MariaDB runs
as a user created with a real password; PostgreSQL's trust auth accepts any password, so its wrong
credentials are an unknown role.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from connectors.base import Connector
from connectors.ldap.slapd import free_port
from connectors.sql import create
from schemas.records import AttrChange, PendingExport
from tests.conformance.suite import ConformanceSuite, Harness, pending
from tests.connectors.test_sql import Sandbox, open_sandbox


class SqlHarness(Harness):
    kind = "sql"
    key_attr = "uid"
    change_attr = "title"

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.people = box.t("people")

    def _spec(self) -> dict[str, Any]:
        return {"table": "people", "anchor": "id", "change_table": "changes"}

    def _config(self, **fields: Any) -> Any:
        return self.box.config({"person": self._spec()}, **fields)

    def connector(self) -> Connector:
        return create("sql", self._config())

    def seed(self, keys: list[str]) -> None:
        with self.box.admin.begin() as conn:
            conn.execute(
                text(f"INSERT INTO {self.people} (uid, title) VALUES (:uid, 'Engineer')"),
                [{"uid": k} for k in keys],
            )

    def change(self, key: str, value: str) -> None:
        with self.box.admin.begin() as conn:
            conn.execute(text(f"UPDATE {self.people} SET title = :v WHERE uid = :k"), {"v": value, "k": key})

    def delete(self, key: str) -> None:
        with self.box.admin.begin() as conn:
            conn.execute(text(f"DELETE FROM {self.people} WHERE uid = :k"), {"k": key})

    def read(self, key: str) -> dict[str, list[str]] | None:
        rows = self.box.rows(f"SELECT uid, title FROM {self.people} WHERE uid = :k", k=key)
        if not rows:
            return None
        uid, title = rows[0]
        return {"uid": [uid], **({"title": [title]} if title is not None else {})}

    def add_export(self, key: str) -> PendingExport:
        return pending(self, "add", attributes={"uid": AttrChange(op="replace", values=[key])})

    def unreachable(self) -> Connector | None:
        if self.box.dialect == "sqlite":
            return None
        port = free_port()
        url = self.box.url.replace(":5432/", f":{port}/").replace(":3306/", f":{port}/")
        return create("sql", self._config(url=url, connect_timeout_s=2))


class ChangeTableHarness(SqlHarness):
    """People logged into a change table by triggers."""

    def __init__(self, box: Sandbox) -> None:
        super().__init__(box)
        box.create_people()
        box.create_change_table("changes")
        box.log_changes("people", "id", "changes")


class PostgresHarness(ChangeTableHarness):
    def __init__(self, box: Sandbox) -> None:
        super().__init__(box)
        self.secret = f"pg-secret-{uuid.uuid4().hex}"  # trust auth ignores it; it must still never show

    def connector(self) -> Connector:
        return create("sql", self._config(password=self.secret))

    def bad_credentials(self) -> Connector:
        url = "postgresql+psycopg://idsync_no_such_role@127.0.0.1:5432/test"
        return create("sql", self._config(url=url, password=self.secret))


class MariaDbHarness(SqlHarness):
    """Deltas by an updated_at column the server maintains; a user with a real password."""

    delta_sees_deletes = False

    def __init__(self, box: Sandbox) -> None:
        super().__init__(box)
        t = box.types
        box.run(
            f"CREATE TABLE {self.people} (id {t['pk']}, uid VARCHAR(64) NOT NULL UNIQUE, title VARCHAR(100), "
            "updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))"
        )
        self.user = f"u_{uuid.uuid4().hex[:10]}"
        self.password = f"maria-{uuid.uuid4().hex}"
        self.secret = self.password
        box.run(
            f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL ON {box.schema}.* TO '{self.user}'@'127.0.0.1'",
        )
        # Connects as that user, straight into the sandbox database (no `schema` in the object type).
        self.url = f"mysql+pymysql://{self.user}@127.0.0.1:3306/{box.schema}"

    def _spec(self) -> dict[str, Any]:
        return {"table": "people", "anchor": "id", "watermark_column": "updated_at", "schema": None}

    def connector(self) -> Connector:
        return create("sql", self._config(url=self.url, password=self.secret))

    def unreachable(self) -> Connector:
        url = self.url.replace(":3306/", f":{free_port()}/")
        return create("sql", self._config(url=url, password=self.secret, connect_timeout_s=2))

    def bad_credentials(self) -> Connector:
        return create("sql", self._config(url=self.url, password="wrong-" + self.password))

    def drop_user(self) -> None:
        self.box.run(f"DROP USER '{self.user}'@'127.0.0.1'")


@pytest.mark.integration
class TestPostgresConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        with open_sandbox("postgresql", tmp_path) as box:
            yield PostgresHarness(box)


@pytest.mark.integration
class TestMariaDbConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        with open_sandbox("mariadb", tmp_path) as box:
            harness = MariaDbHarness(box)
            try:
                yield harness
            finally:
                harness.drop_user()


@pytest.mark.integration
class TestSqliteConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        with open_sandbox("sqlite", tmp_path) as box:
            yield ChangeTableHarness(box)
