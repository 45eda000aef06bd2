"""The conformance suite on the file connectors: JSON Lines, LDIF (import + delta, and export) and CSV with
export, each on real files in a temporary directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from connectors.base import Connector
from connectors.csv import open_csv
from connectors.files.config import JsonlConnectorConfig, LdifConnectorConfig
from connectors.files.jsonl import JsonlConnector
from connectors.files.ldif import open_ldif
from connectors.files.ldif_format import chunks, parse_chunk
from schemas.config import CsvConnectorConfig
from schemas.records import AttrChange, PendingExport
from tests.conformance.suite import ConformanceSuite, Harness, pending


def _replace(path: Path, data: bytes) -> None:
    """Out-of-band writes are atomic too, as a real producer's should be."""
    tmp = path.with_name(path.name + ".oob")
    tmp.write_bytes(data)
    tmp.replace(path)


# ====================================================================== JSON Lines
class JsonlHarness(Harness):
    kind = "jsonl"
    key_attr = "uid"
    change_attr = "title"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.objects: dict[str, dict[str, object]] = {}
        self._write()

    def _write(self) -> None:
        lines = [json.dumps(o, ensure_ascii=False) + "\n" for o in self.objects.values()]
        _replace(self.path, "".join(lines).encode())

    def connector(self) -> Connector:
        config = JsonlConnectorConfig(kind="jsonl", path=self.path, anchor="id")
        return JsonlConnector("feed", config)

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.objects[key] = {
                "id": f"J-{key}",
                "uid": key,
                "title": "Engineer",
                "groups": ["staff", "all"],
                "address": {"city": "Oslo", "zip": None},
                "manager": None,
            }
        self._write()

    def change(self, key: str, value: str) -> None:
        self.objects[key]["title"] = value
        self._write()

    def delete(self, key: str) -> None:
        del self.objects[key]
        self._write()

    def read(self, key: str) -> dict[str, list[str]] | None:
        obj = self.objects.get(key)
        return None if obj is None else {"uid": [str(obj["uid"])], "title": [str(obj["title"])]}


# ====================================================================== LDIF: import + delta
BASE = "ou=people,dc=example,dc=org"
HEADER = f"version: 1\n\ndn: {BASE}\nobjectClass: organizationalUnit\nou: people\n\n"


def _dn(key: str) -> str:
    return f"cn={key},{BASE}"


class LdifDeltaHarness(Harness):
    """A content LDIF and a change LDIF that out-of-band changes are appended to."""

    kind = "ldif"
    key_attr = "cn"
    change_attr = "title"

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "people.ldif"
        self.changes = tmp / "changes.ldif"
        self.path.write_text(HEADER)
        self.changes.write_text("version: 1\n\n")

    def connector(self) -> Connector:
        config = LdifConnectorConfig(kind="ldif", path=self.path, changes_path=self.changes)
        return open_ldif("dir", config)

    def _append(self, record: str) -> None:
        with self.changes.open("a") as f:
            f.write(record + "\n")

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self._append(
                f"# seeded\ndn: {_dn(key)}\nchangetype: add\nobjectClass: inetOrgPerson\ncn: {key}\nsn: S\n"
                "title: Engineer\n"
            )

    def change(self, key: str, value: str) -> None:
        self._append(f"dn: {_dn(key)}\nchangetype: modify\nreplace: title\ntitle: {value}\n-\n")

    def delete(self, key: str) -> None:
        self._append(f"dn: {_dn(key)}\nchangetype: delete\n")

    def read(self, key: str) -> dict[str, list[str]] | None:
        raise NotImplementedError("no export: the suite never reads")


# ====================================================================== LDIF: export
class LdifExportHarness(Harness):
    """The export file is also the content LDIF a full import reads (a confirming import)."""

    kind = "ldif"
    key_attr = "cn"
    change_attr = "title"

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "out.ldif"  # does not exist before the first export

    def connector(self) -> Connector:
        config = LdifConnectorConfig(
            kind="ldif", path=self.path, export_path=self.path, anchor_attribute="employeeNumber"
        )
        return open_ldif("dir", config)

    def _entries(self) -> dict[str, dict[str, list[str]]]:
        data = self.path.read_bytes() if self.path.exists() else b""
        out: dict[str, dict[str, list[str]]] = {}
        for chunk in chunks(data):
            record = parse_chunk(chunk, first=chunk.start == 0)
            if record is not None:
                attrs: dict[str, list[str]] = {}
                for name, value in record.attributes:
                    attrs.setdefault(name, []).append(value)
                out[record.dn] = attrs
        return out

    def _write(self, entries: dict[str, dict[str, list[str]]]) -> None:
        text = "version: 1\n\n"
        for dn, attrs in entries.items():
            text += f"dn: {dn}\n" + "".join(f"{n}: {v}\n" for n, vs in attrs.items() for v in vs) + "\n"
        _replace(self.path, text.encode())

    def seed(self, keys: list[str]) -> None:
        entries = self._entries()
        for key in keys:
            entries[_dn(key)] = {
                "objectClass": ["inetOrgPerson"],
                "cn": [key],
                "sn": ["S"],
                "employeeNumber": [f"E-{key}"],
                "title": ["Engineer"],
            }
        self._write(entries)

    def change(self, key: str, value: str) -> None:
        entries = self._entries()
        entries[_dn(key)]["title"] = [value]
        self._write(entries)

    def delete(self, key: str) -> None:
        entries = self._entries()
        del entries[_dn(key)]
        self._write(entries)

    def read(self, key: str) -> dict[str, list[str]] | None:
        return self._entries().get(_dn(key))

    def add_export(self, key: str) -> PendingExport:
        return pending(
            self,
            "add",
            dn=_dn(key),
            attributes={
                "cn": AttrChange(op="replace", values=[key]),
                "sn": AttrChange(op="replace", values=["S"]),
                "employeeNumber": AttrChange(op="replace", values=[f"E-{key}"]),
                "title": AttrChange(op="replace", values=["Engineer"]),
            },
        )


# ====================================================================== CSV with export
class CsvExportHarness(Harness):
    """A CSV export file with a header mapping, also read back by the connector's full import."""

    kind = "csv"
    key_attr = "uid"
    change_attr = "title"
    columns = {"employee_id": "Employee ID", "uid": "User Name", "title": "Job Title", "groups": "Groups"}

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "export.csv"

    def connector(self) -> Connector:
        config = CsvConnectorConfig(
            kind="csv",
            path=self.path,
            export_path=self.path,
            anchor="Employee ID",
            columns=self.columns,
            dn_column="DN",
            multi_valued=["Groups"],
            multi_value_separator=";",
        )
        return open_csv("out", config)

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: list[dict[str, str]]) -> None:
        header = ["Employee ID", "DN", "User Name", "Job Title", "Groups"]
        tmp = self.path.with_name("oob.csv")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def seed(self, keys: list[str]) -> None:
        rows = self._rows()
        for key in keys:
            rows.append(
                {
                    "Employee ID": f"E-{key}",
                    "DN": f"uid={key},ou=people",
                    "User Name": key,
                    "Job Title": "Engineer",
                    "Groups": "staff;all",
                }
            )
        self._write(rows)

    def _edit(self, key: str, title: str | None) -> None:
        rows = self._rows()
        for row in rows:
            if row["User Name"] == key:
                row["Job Title"] = title or ""
        self._write([r for r in rows if title is not None or r["User Name"] != key])

    def change(self, key: str, value: str) -> None:
        self._edit(key, value)

    def delete(self, key: str) -> None:
        self._edit(key, None)

    def read(self, key: str) -> dict[str, list[str]] | None:
        for row in self._rows():
            if row["User Name"] == key:
                return {
                    "employee_id": [row["Employee ID"]],
                    "uid": [row["User Name"]],
                    "title": [row["Job Title"]] if row["Job Title"] else [],
                    "groups": row["Groups"].split(";") if row["Groups"] else [],
                }
        return None

    def add_export(self, key: str) -> PendingExport:
        return pending(
            self,
            "add",
            dn=f"uid={key},ou=people",
            attributes={
                "employee_id": AttrChange(op="replace", values=[f"E-{key}"]),
                "uid": AttrChange(op="replace", values=[key]),
                "title": AttrChange(op="replace", values=["Engineer"]),
                "groups": AttrChange(op="replace", values=["staff", "all"]),
            },
        )


class TestJsonlConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return JsonlHarness(tmp_path / "feed.jsonl")


class TestLdifDeltaConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return LdifDeltaHarness(tmp_path)


class TestLdifExportConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return LdifExportHarness(tmp_path)


class TestCsvExportConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return CsvExportHarness(tmp_path)
