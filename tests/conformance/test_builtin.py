"""The conformance suite on the built-in CSV and LDAP connectors (real files, real slapd)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from ldap3 import MODIFY_REPLACE
from ldap3.utils.dn import escape_rdn

from connectors.base import Connector
from connectors.csv import CsvConnector
from connectors.ldap import LdapConnector
from connectors.ldap.slapd import free_port
from schemas.config import CsvConnectorConfig
from schemas.records import AttrChange, PendingExport
from tests.conformance.suite import ConformanceSuite, Harness, pending
from tests.fixtures.slapd import LdapTree


class CsvHarness(Harness):
    kind = "csv"
    key_attr = "uid"
    change_attr = "title"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, str]] = {}
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["employee_id", "uid", "title"])
            w.writeheader()
            w.writerows(self.rows.values())
        tmp.replace(self.path)

    def connector(self) -> Connector:
        config = CsvConnectorConfig(kind="csv", path=self.path, anchor="employee_id")
        return CsvConnector("hr", config)

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.rows[key] = {"employee_id": f"E-{key}", "uid": key, "title": "Engineer"}
        self._write()

    def change(self, key: str, value: str) -> None:
        self.rows[key]["title"] = value
        self._write()

    def delete(self, key: str) -> None:
        del self.rows[key]
        self._write()

    def read(self, key: str) -> dict[str, list[str]] | None:
        row = self.rows.get(key)
        return None if row is None else {k: [v] for k, v in row.items()}


class LdapHarness(Harness):
    kind = "ldap"
    key_attr = "cn"
    change_attr = "title"

    def __init__(self, tree: LdapTree) -> None:
        self.tree = tree
        self.secret = tree.slapd.password

    def dn(self, key: str) -> str:
        return f"cn={escape_rdn(key)},{self.tree.base_dn}"

    def connector(self) -> Connector:
        return LdapConnector("ldap", self.tree.config())

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.tree.add(self.dn(key), {"objectClass": ["inetOrgPerson"], "cn": [key], "sn": ["S"]})

    def change(self, key: str, value: str) -> None:
        self.tree.conn.modify(self.dn(key), {"title": [(MODIFY_REPLACE, [value])]})

    def delete(self, key: str) -> None:
        self.tree.conn.delete(self.dn(key))

    def read(self, key: str) -> dict[str, list[str]] | None:
        return self.tree.read(self.dn(key))

    def add_export(self, key: str) -> PendingExport:
        return pending(
            self,
            "add",
            dn=self.dn(key),
            attributes={
                "objectClass": AttrChange(op="replace", values=["inetOrgPerson"]),
                "cn": AttrChange(op="replace", values=[key]),
                "sn": AttrChange(op="replace", values=["S"]),
            },
        )

    def unreachable(self) -> Connector:
        config = self.tree.config(uri=f"ldap://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
        return LdapConnector("ldap", config)

    def bad_credentials(self) -> Connector:
        return LdapConnector("ldap", self.tree.config(password="wrong-" + self.tree.slapd.password))


class TestCsvConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return CsvHarness(tmp_path / "hr.csv")


@pytest.mark.integration
class TestLdapConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, ldap_tree: LdapTree) -> Harness:
        return LdapHarness(ldap_tree)
