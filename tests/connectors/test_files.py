"""File connectors on real files: JSON Lines, LDIF import / delta / export, CSV export, atomic writes."""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors import base, registry
from connectors.base import (
    Checkpoint,
    CursorExpired,
    DeletedObject,
    DeltaItem,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
)
from connectors.csv import CsvConnector, CsvExportConnector, open_csv
from connectors.files import atomic, ldif
from connectors.files.atomic import atomic_write, write_error
from connectors.files.config import JsonlConnectorConfig, LdifConnectorConfig
from connectors.files.jsonl import JsonlConnector
from connectors.files.ldif import LdifConnector, open_ldif
from connectors.files.ldif_format import LdifError, chunks, format_line, normalize_dn, parse_chunk
from schemas.config import CsvConnectorConfig
from schemas.errors import DataError, FatalError, RetriableError
from schemas.records import AttrChange, PendingExport

_n = 0


def export(op: str, *, object_type: str = "person", **fields: Any) -> PendingExport:
    global _n
    _n += 1
    attributes = {
        name: change if isinstance(change, AttrChange) else AttrChange(op="replace", values=change)
        for name, change in fields.pop("attributes", {}).items()
    }
    data: dict[str, Any] = {
        "export_id": f"x-{_n}",
        "seq": _n,
        "connector": "test",
        "mv_id": f"mv-{_n}",
        "op": op,
        "object_type": object_type,
        "dn": "",
        "ts_ms": 0,
        "attributes": attributes,
        **fields,
    }
    return PendingExport.model_validate(data)


def split(items: Iterator[Any] | list[Any]) -> tuple[list[ImportedObject], list[ImportFailure]]:
    items = list(items)
    objects = [i for i in items if isinstance(i, ImportedObject)]
    return objects, [i for i in items if isinstance(i, ImportFailure)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(atomic.TMP_SUFFIX))


# ====================================================================== JSON Lines
def jsonl(path: Path, **overrides: Any) -> JsonlConnector:
    config = JsonlConnectorConfig.model_validate({"kind": "jsonl", "path": path, "anchor": "id", **overrides})
    return JsonlConnector("feed", config)


def test_jsonl_values(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    lines = [
        {
            "id": "E1",
            "name": "Zoë",
            "age": 42,
            "ratio": 1.5,
            "active": True,
            "groups": ["staff", "admins", "staff", None],
            "address": {"city": "Oslo", "geo": {"lat": 59.9}, "zip": None},
            "phones": [{"type": "work", "n": "1"}, ["x", 1]],
            "manager": None,
            "tags": [],
            "extra": {},
        },
        {"id": 7, "name": "Bob"},
    ]
    path.write_text("\n".join(json.dumps(o, ensure_ascii=False) for o in lines) + "\n", encoding="utf-8")
    objects, failures = split(jsonl(path, object_type="user").full_import())
    assert failures == []
    assert objects[0] == ImportedObject(
        anchor="E1",
        object_type="user",
        attributes={
            "id": ["E1"],
            "name": ["Zoë"],
            "age": ["42"],
            "ratio": ["1.5"],
            "active": ["true"],
            "groups": ["staff", "admins"],
            "address.city": ["Oslo"],
            "address.geo.lat": ["59.9"],
            "phones": ['{"n":"1","type":"work"}', '["x",1]'],
        },
        dn=None,
        locator="feed.jsonl:1",
    )
    assert (objects[1].anchor, objects[1].attributes, objects[1].locator) == (
        "7",
        {"id": ["7"], "name": ["Bob"]},
        "feed.jsonl:2",
    )


def test_jsonl_bad_lines_are_failures_and_the_import_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_bytes(
        b'{"id": "1", "n": "a"}\n'
        b'{"id": "2", "n": \n'  # truncated
        b"[1, 2]\n"  # not an object
        b'{"n": "no anchor"}\n'
        b'{"id": ["a", "b"]}\n'
        b'{"id": " "}\n'
        b'{"id": "1", "n": "again"}\n'
        b'{"id": "3", "a": 1, "a": 2}\n'
        b'{"id": "4", "v": NaN}\n'
        b'{"id": "5", "a.b": 1, "a": {"b": 2}}\n'
        b"\n   \n"
        b'{"id": "6", "n": "B\xffb"}\n'
        b'{"id": "7", "": 1}\r\n'
        b'{"id": "8", "n": "last"}\r\n'
    )
    objects, failures = split(jsonl(path).full_import())
    assert [o.anchor for o in objects] == ["1", "8"]
    assert objects[1].locator == "feed.jsonl:15"
    assert [(f.locator, f.error_type) for f in failures] == [
        ("feed.jsonl:2", "import-malformed-line"),
        ("feed.jsonl:3", "import-malformed-line"),
        ("feed.jsonl:4", "import-missing-anchor"),
        ("feed.jsonl:5", "import-missing-anchor"),
        ("feed.jsonl:6", "import-missing-anchor"),
        ("feed.jsonl:7", "import-duplicate-anchor"),
        ("feed.jsonl:8", "import-malformed-line"),
        ("feed.jsonl:9", "import-malformed-line"),
        ("feed.jsonl:10", "import-attribute-clash"),
        ("feed.jsonl:13", "import-decode-error"),
        ("feed.jsonl:14", "import-malformed-line"),
    ]
    messages = {f.locator: f.message for f in failures}
    assert "not valid JSON" in messages["feed.jsonl:2"]
    assert "expected a JSON object, got list" in messages["feed.jsonl:3"]
    assert "2 values" in messages["feed.jsonl:5"]
    assert "first seen on line 1" in messages["feed.jsonl:7"]
    assert "duplicate key 'a'" in messages["feed.jsonl:8"]
    assert "NaN" in messages["feed.jsonl:9"]
    assert "'a.b'" in messages["feed.jsonl:10"]
    assert failures[0].raw == '{"id": "2", "n": '


def test_jsonl_object_type_from_a_field(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(
        '{"id": 1, "t": "group"}\n{"id": 2, "t": "user"}\n{"id": 3}\n{"id": 4, "t": ["a", "b"]}\n'
    )
    objects, failures = split(jsonl(path, object_type_field="t").full_import())
    assert [(o.anchor, o.object_type) for o in objects] == [("1", "group"), ("2", "user")]
    assert [(f.locator, f.error_type) for f in failures] == [
        ("feed.jsonl:3", "import-missing-object-type"),
        ("feed.jsonl:4", "import-missing-object-type"),
    ]


def test_jsonl_nested_anchor(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text('{"ids": {"employee": "E9"}, "n": "x"}\n')
    objects, _ = split(jsonl(path, anchor="ids.employee").full_import())
    assert [o.anchor for o in objects] == ["E9"]


@pytest.mark.parametrize("encoding", ["cp1252", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_jsonl_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "feed.jsonl"
    text = '{"id": "1", "name": "Zoë Müller"}\n{"id": "2", "name": "Søren"}\n'
    path.write_bytes(text.encode(encoding))
    objects, failures = split(jsonl(path, encoding=encoding).full_import())
    assert failures == []
    assert [(o.anchor, o.attributes["name"], o.locator) for o in objects] == [
        ("1", ["Zoë Müller"], "feed.jsonl:1"),
        ("2", ["Søren"], "feed.jsonl:2"),
    ]


def test_jsonl_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1"}\n')
    objects, failures = split(jsonl(path).full_import())
    assert (failures, [o.anchor for o in objects]) == ([], ["1"])


def test_jsonl_fatal_errors(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_bytes('{"id": "1"}\n'.encode("utf-16") + b"\x00\xd8")  # a lone surrogate half at the end
    with pytest.raises(FatalError, match="not valid utf-16"):
        list(jsonl(path, encoding="utf-16").full_import())
    with pytest.raises(ValidationError, match="unknown encoding"):
        jsonl(path, encoding="no-such-codec")
    connector = jsonl(path)
    connector.test_connection()
    path.unlink()
    with pytest.raises(FatalError) as info:
        list(connector.full_import())
    assert str(path) in info.value.message
    with pytest.raises(FatalError) as info:
        connector.test_connection()
    assert info.value.error_type == "no-start-file-not-found"


# ====================================================================== LDIF reading
def records(data: bytes) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks(data):
        try:
            out.append(parse_chunk(chunk, first=chunk.start == 0))
        except LdifError as exc:
            out.append(exc)
    return out


def test_ldif_folding_base64_comments_and_crlf() -> None:
    photo = bytes(range(256))
    zoe = "Zoë".encode()
    data = (
        b"version: 1\r\n"
        b"# a comment that is\r\n"
        b"  folded over two lines\r\n"
        b"dn: cn=Ann,ou=people,dc=example,dc=org\r\n"
        b"objectClass: inetOrgPerson\r\n"
        b"description: a long value folded\r\n"
        b"  in the middle of a word, and cont\r\n"
        b" inued\r\n"
        # a UTF-8 character split by the fold
        b"sn: " + zoe[:3] + b"\r\n " + zoe[3:] + b"\r\n"
        b"cn:: " + base64.b64encode("Ann Åström".encode()) + b"\r\n"
        b"jpegPhoto:: " + base64.b64encode(photo)[:40] + b"\r\n " + base64.b64encode(photo)[40:] + b"\r\n"
        b"userCertificate;binary:: " + base64.b64encode(b"text") + b"\r\n"
        b"title:    leading fill is not part of the value \r\n"
        b"empty:\r\n"
        b"\r\n"
        b"\r\n"
        b"# trailing comment\r\n"
    )
    [record, trailing] = records(data)
    assert trailing is None
    assert record.dn == "cn=Ann,ou=people,dc=example,dc=org"
    assert record.change == "content"
    assert record.line == 4  # the dn line (the chunk starts with the version line and a comment)
    assert dict(record.attributes) == {
        "objectClass": "inetOrgPerson",
        "description": "a long value folded in the middle of a word, and continued",
        "sn": "Zoë",
        "cn": "Ann Åström",
        "jpegPhoto": "base64:" + base64.b64encode(photo).decode(),
        "userCertificate;binary": "base64:" + base64.b64encode(b"text").decode(),
        "title": "leading fill is not part of the value ",
        "empty": "",
    }


def test_ldif_change_records() -> None:
    data = b"""version: 1

dn: cn=a,dc=x
changetype: add
objectClass: person
cn: a

dn: cn=a,dc=x
changetype: modify
add: mail
mail: a@x
mail: b@x
-
delete: description
-
delete: telephoneNumber
telephoneNumber: 1
-
replace: sn
sn: A
-
replace: title

dn: cn=a,dc=x
changetype: modrdn
newrdn: cn=b
deleteoldrdn: 1
newsuperior: ou=new,dc=x

dn:: Y249YyxkYz14
changetype: moddn
newrdn:: Y249ZA==
deleteoldrdn: 0

dn: cn=d,dc=x
changetype: delete
"""
    version, add, modify, modrdn, moddn, delete = records(data)
    assert version is None
    assert (add.change, add.attributes) == ("add", (("objectClass", "person"), ("cn", "a")))
    assert [(m.op, m.attribute, m.values) for m in modify.mods] == [
        ("add", "mail", ("a@x", "b@x")),
        ("delete", "description", ()),
        ("delete", "telephoneNumber", ("1",)),
        ("replace", "sn", ("A",)),
        ("replace", "title", ()),
    ]
    assert (modrdn.new_rdn, modrdn.delete_old_rdn, modrdn.new_superior) == ("cn=b", True, "ou=new,dc=x")
    assert (moddn.change, moddn.dn, moddn.new_rdn, moddn.delete_old_rdn) == (
        "modrdn",
        "cn=c,dc=x",
        "cn=d",
        False,
    )
    assert (delete.change, delete.dn, delete.line) == ("delete", "cn=d,dc=x", 35)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"cn: a\n", "starts with 'dn:'"),
        (b"dn: cn=a,dc=x\n", "has no attributes"),
        (b"dn: not a dn\ncn: a\n", "invalid dn"),
        (b"dn: cn=a,dc=x\ncn:: %%%\n", "invalid base64"),
        (b"dn: cn=a,dc=x\ncn: \xff\n", "not valid UTF-8"),
        (b"dn: cn=a,dc=x\nbad name: a\n", "invalid attribute name"),
        (b"dn: cn=a,dc=x\nno colon\n", "expected 'attribute: value'"),
        (b"dn: cn=a,dc=x\nchangetype: frobnicate\n", "unknown changetype"),
        (b"dn: cn=a,dc=x\nchangetype: delete\ncn: a\n", "nothing after"),
        (b"dn: cn=a,dc=x\ncontrol: 1.2.840.113556.1.4.805 true\nchangetype: delete\n", "controls"),
        (b"dn: cn=a,dc=x\nchangetype: modify\nincrement: uidNumber\nuidNumber: 1\n-\n", "increment"),
        (b"dn: cn=a,dc=x\nchangetype: modify\nadd: mail\ncn: a\n-\n", "missing '-'"),
        (b"dn: cn=a,dc=x\nchangetype: modify\n", "has no 'add:'"),
        (b"dn: cn=a,dc=x\nchangetype: modrdn\nnewrdn: cn=b\n", "needs 'newrdn:' and 'deleteoldrdn:'"),
        (b"dn: cn=a,dc=x\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 2\n", "0 or 1"),
        (b"dn: cn=a,dc=x\nchangetype: modrdn\nnewrdn: cn=b,dc=y\ndeleteoldrdn: 1\n", "not a single RDN"),
        (b"version: 2\n\ndn: cn=a,dc=x\ncn: a\n", "unsupported LDIF version"),
        (b"\n\ndn: cn=a,dc=x\ncn: a\n\nversion: 1\n", "only opens a file"),
    ],
)
def test_ldif_malformed_records(text: bytes, message: str) -> None:
    errors = [r for r in records(text) if isinstance(r, LdifError)]
    assert len(errors) == 1
    assert message in str(errors[0])


def test_ldif_url_values_are_rejected_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-content")
    path = tmp_path / "people.ldif"
    path.write_text(
        "dn: cn=a,dc=x\nobjectClass: inetOrgPerson\ncn: a\n\n"
        f"dn: cn=b,dc=x\nobjectClass: inetOrgPerson\ncn: b\ndescription:< file://{secret}\n\n"
        "dn: cn=c,dc=x\nobjectClass: inetOrgPerson\ncn: c\n"
    )
    objects, failures = split(ldif_connector(path=path).full_import())
    assert [o.dn for o in objects] == ["cn=a,dc=x", "cn=c,dc=x"]
    [failure] = failures
    assert (failure.locator, failure.error_type) == ("people.ldif:5", "import-url-value-rejected")
    assert "is not read" in failure.message and "line 8" in failure.message
    text = repr([*objects, *failures])
    assert "top-secret-content" not in text


def test_format_line_round_trips() -> None:
    values = [
        "plain",
        "",
        " leading space",
        "trailing space ",
        ":colon",
        "<less",
        "multi\nline",
        "Zoë Åström",
        "x" * 200,
        "é" * 100,
        "base64:" + base64.b64encode(b"\x00\xff binary").decode(),
    ]
    for value in values:
        line = format_line("description", value)
        assert all(len(physical) <= 76 for physical in line.split(b"\n")), value
        line.decode("ascii")  # non-ASCII is always base64
        [record] = records(b"dn: cn=a,dc=x\n" + line)
        assert record.attributes == (("description", value),)
    assert format_line("cn", "Ann") == b"cn: Ann\n"
    assert format_line("cn", " x").startswith(b"cn:: ")


def test_normalize_dn() -> None:
    assert normalize_dn("CN=Ann  Lee , OU=People,dc=Example") == "cn=ann lee,ou=people,dc=example"
    assert normalize_dn("cn=a+uid=B,dc=x") == normalize_dn("UID=b+CN=A,DC=X")
    assert normalize_dn(r"cn=Lee\, Ann,dc=x") == r"cn=lee\, ann,dc=x"
    with pytest.raises(DataError):
        normalize_dn("not a dn")


# ====================================================================== LDIF full import
def ldif_connector(**overrides: Any) -> Any:
    config = LdifConnectorConfig.model_validate({"kind": "ldif", **overrides})
    return open_ldif("dir", config)


PEOPLE = """version: 1

dn: dc=example,dc=org
objectClass: domain
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: cn=Ann,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
cn: Ann
sn: Lee
entryUUID: 11111111-1111-1111-1111-111111111111
mail: ann@example.org

dn: cn=Bob,ou=people,dc=example,dc=org
objectClass: top
objectClass: INETORGPERSON
cn: Bob
sn: Smith
title: Engineer

dn: cn=staff,dc=example,dc=org
objectClass: groupOfNames
cn: staff
member: cn=Ann,ou=people,dc=example,dc=org

"""


def people(tmp_path: Path, text: str = PEOPLE, changes: str | None = None) -> dict[str, Path]:
    path = tmp_path / "people.ldif"
    path.write_text(text)
    files = {"path": path}
    if changes is not None:
        files["changes_path"] = tmp_path / "changes.ldif"
        files["changes_path"].write_text(changes)
    return files


def test_ldif_full_import_anchors_types_and_scope(tmp_path: Path) -> None:
    connector = ldif_connector(
        **people(tmp_path), object_classes={"person": "inetOrgPerson", "group": "groupOfNames"}
    )
    objects, failures = split(connector.full_import())
    assert failures == []
    assert [(o.anchor, o.object_type, o.locator) for o in objects] == [
        ("11111111-1111-1111-1111-111111111111", "person", "people.ldif:11"),
        ("cn=bob,ou=people,dc=example,dc=org", "person", "people.ldif:18"),  # no entryUUID: the DN
        ("cn=staff,dc=example,dc=org", "group", "people.ldif:25"),
    ]
    assert objects[0].dn == "cn=Ann,ou=people,dc=example,dc=org"
    assert objects[0].attributes["mail"] == ["ann@example.org"]
    assert objects[1].attributes["objectClass"] == ["top", "INETORGPERSON"]
    # Another anchor attribute; the domain and the OU are out of scope.
    objects, _ = split(ldif_connector(**people(tmp_path), anchor_attribute="sn").full_import())
    assert [o.anchor for o in objects] == ["Lee", "Smith"]


def test_ldif_full_import_failures_go_on(tmp_path: Path) -> None:
    text = PEOPLE + (
        "dn: cn=Ann,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\ncn: Ann\n\n"  # same DN
        "dn: cn=Cy,dc=example,dc=org\nobjectClass: inetOrgPerson\ncn: Cy\n"
        "entryUUID: 11111111-1111-1111-1111-111111111111\n\n"  # same anchor
        "dn: cn=Di,dc=example,dc=org\ncn: Di\n\n"  # no objectClass
        "dn: cn=Ed,dc=example,dc=org\nchangetype: delete\n\n"  # a change in a content file
        "dn: cn=Fy,dc=example,dc=org\nobjectClass: inetOrgPerson\ncn: Fy\n"  # last record, no empty line
    )
    objects, failures = split(ldif_connector(**people(tmp_path, text)).full_import())
    assert [o.dn for o in objects] == [
        "cn=Ann,ou=people,dc=example,dc=org",
        "cn=Bob,ou=people,dc=example,dc=org",
        "cn=Fy,dc=example,dc=org",
    ]
    assert sorted((f.locator, f.error_type) for f in failures) == [
        ("people.ldif:30", "import-existing-object"),
        ("people.ldif:34", "import-duplicate-anchor"),
        ("people.ldif:39", "import-missing-object-class"),
        ("people.ldif:42", "import-malformed-record"),
    ]


CHANGES = """version: 1

dn: cn=Cy,ou=people,dc=example,dc=org
changetype: add
objectClass: inetOrgPerson
cn: Cy
sn: Young

dn: cn=Ann,ou=people,dc=example,dc=org
changetype: modify
add: mail
mail: ann2@example.org
-
replace: title
title: Boss
-

dn: cn=Bob,ou=people,dc=example,dc=org
changetype: delete

"""


def test_ldif_full_import_replays_the_change_file(tmp_path: Path) -> None:
    connector = ldif_connector(**people(tmp_path, changes=CHANGES))
    objects, failures = split(connector.full_import())
    assert failures == []
    by_cn = {o.attributes["cn"][0]: o for o in objects}
    assert set(by_cn) == {"Ann", "Cy"}
    assert by_cn["Ann"].attributes["mail"] == ["ann@example.org", "ann2@example.org"]
    assert by_cn["Ann"].attributes["title"] == ["Boss"]
    assert by_cn["Ann"].attributes["sn"] == ["Lee"]  # the full image, not just what changed
    assert by_cn["Ann"].locator == "changes.ldif:9"
    assert by_cn["Cy"].anchor == "cn=cy,ou=people,dc=example,dc=org"


# ====================================================================== LDIF delta
ANN = "11111111-1111-1111-1111-111111111111"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def delta(connector: Any, watermark: str | None) -> tuple[list[DeltaItem], str]:
    items = list(connector.delta_import(watermark))
    assert isinstance(items[-1], Checkpoint)
    return items[:-1], items[-1].watermark


def test_ldif_delta_appended_changes(tmp_path: Path) -> None:
    files = people(tmp_path, changes="version: 1\n\n")
    connector = ldif_connector(**files)
    assert isinstance(connector, base.DeltaImport)
    mark = connector.current_watermark()
    items, again = delta(connector, None)
    assert (items, again) == ([], mark)

    append(files["changes_path"], CHANGES.removeprefix("version: 1\n\n"))
    items, mark2 = delta(connector, mark)
    assert [type(i).__name__ for i in items] == ["ImportedObject", "ImportedObject", "DeletedObject"]
    cy, ann, bob = items
    assert isinstance(cy, ImportedObject) and cy.attributes["sn"] == ["Young"]
    assert isinstance(ann, ImportedObject)
    assert ann.anchor == ANN
    assert ann.attributes == {
        "objectClass": ["inetOrgPerson"],
        "cn": ["Ann"],
        "sn": ["Lee"],
        "entryUUID": [ANN],
        "mail": ["ann@example.org", "ann2@example.org"],
        "title": ["Boss"],
    }
    assert ann.locator == "changes.ldif:9"
    assert bob == DeletedObject(
        "cn=bob,ou=people,dc=example,dc=org",
        "person",
        "cn=Bob,ou=people,dc=example,dc=org",
        "changes.ldif:18",
    )
    assert mark2 == connector.current_watermark()
    assert delta(connector, mark2) == ([], mark2)

    # The same changes seen from the first watermark again (a resumed run): the same items.
    assert delta(connector, mark)[0] == items


def test_ldif_delta_waits_for_a_record_to_be_complete(tmp_path: Path) -> None:
    files = people(tmp_path, changes="")
    connector = ldif_connector(**files)
    mark = connector.current_watermark()
    dn = "dn: cn=Ann,ou=people,dc=example,dc=org\n"
    append(files["changes_path"], dn + "changetype: modify\nreplace: title\ntitle: Hal")
    items, mark2 = delta(connector, mark)
    assert (items, mark2) == ([], mark)  # half written: not yet
    assert connector.current_watermark() == mark
    append(files["changes_path"], "f\n-\n")
    assert delta(connector, mark) == ([], mark)  # still no empty line after it
    append(files["changes_path"], "\n")
    items, mark3 = delta(connector, mark)
    [ann] = items
    assert isinstance(ann, ImportedObject) and ann.attributes["title"] == ["Half"]
    assert mark3 == connector.current_watermark() != mark
    # A full import leaves out what a delta cannot see yet either.
    append(files["changes_path"], dn + "changetype: modify\nreplace: title\ntitle: Later\n")
    objects, _ = split(connector.full_import())
    assert next(o for o in objects if o.anchor == ANN).attributes["title"] == ["Half"]


def test_ldif_delta_rewritten_files_expire_the_cursor(tmp_path: Path) -> None:
    files = people(tmp_path, changes=CHANGES)
    connector = ldif_connector(**files)
    mark = connector.current_watermark()
    # Compacted: the changes folded into a new content file, the change file started afresh.
    files["changes_path"].write_text("version: 1\n\n")
    with pytest.raises(CursorExpired, match="rewritten"):
        list(connector.delta_import(mark))
    mark = connector.current_watermark()
    append(files["path"], "dn: cn=New,dc=example,dc=org\nobjectClass: inetOrgPerson\ncn: New\n\n")
    with pytest.raises(CursorExpired, match="content LDIF"):
        list(connector.delta_import(mark))
    # An edit inside what the watermark covered, same length.
    files["changes_path"].write_text(CHANGES)
    mark = connector.current_watermark()
    files["changes_path"].write_text(CHANGES.replace("Young", "Yoing"))
    with pytest.raises(CursorExpired):
        list(connector.delta_import(mark))
    for junk in ("", "garbage", "ldif1:x:y:z", "ldif1:999999:aa:bb"):
        with pytest.raises(CursorExpired) as info:
            list(connector.delta_import(junk))
        assert info.value.error_type == "cursor-expired"


def test_ldif_delta_modrdn_scope_and_failures(tmp_path: Path) -> None:
    files = people(tmp_path, changes="")
    connector = ldif_connector(**files)
    mark = connector.current_watermark()
    append(
        files["changes_path"],
        # Ann has an entryUUID anchor: a move keeps it; the old RDN value goes, the new one comes.
        "dn: cn=Ann,ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: cn=Anna\ndeleteoldrdn: 1\n\n"
        # Bob is anchored by DN: a move is a delete and an add.
        "dn: cn=Bob,ou=people,dc=example,dc=org\nchangetype: moddn\nnewrdn: cn=Robert\ndeleteoldrdn: 0\n\n"
        # A change to something that is not there: a failure, and the delta goes on.
        "dn: cn=Nobody,dc=example,dc=org\nchangetype: modify\nreplace: sn\nsn: X\n-\n\n"
        # The group comes into scope, then leaves it.
        "dn: cn=staff,dc=example,dc=org\nchangetype: modify\nadd: objectClass\nobjectClass: inetOrgPerson\n"
        "-\nadd: sn\nsn: S\n-\n\n"
        "dn: cn=staff,dc=example,dc=org\nchangetype: modify\ndelete: objectClass\n"
        "objectClass: inetOrgPerson\n-\n\n",
    )
    items, mark2 = delta(connector, mark)
    summary = [
        (type(i).__name__, getattr(i, "anchor", None), getattr(i, "dn", None) or getattr(i, "locator", None))
        for i in items
    ]
    assert summary == [
        ("ImportedObject", ANN, "cn=Anna,ou=people,dc=example,dc=org"),
        ("DeletedObject", "cn=bob,ou=people,dc=example,dc=org", "cn=Bob,ou=people,dc=example,dc=org"),
        ("ImportedObject", "cn=robert,ou=people,dc=example,dc=org", "cn=Robert,ou=people,dc=example,dc=org"),
        ("ImportFailure", None, "changes.ldif:11"),
        ("ImportedObject", "cn=staff,dc=example,dc=org", "cn=staff,dc=example,dc=org"),
        ("DeletedObject", "cn=staff,dc=example,dc=org", "cn=staff,dc=example,dc=org"),
    ]
    anna, robert = items[0], items[2]
    assert isinstance(anna, ImportedObject) and anna.attributes["cn"] == ["Anna"]
    assert isinstance(robert, ImportedObject) and robert.attributes["cn"] == ["Bob", "Robert"]
    failure = items[3]
    assert isinstance(failure, ImportFailure) and failure.error_type == "import-missing-object"
    assert delta(connector, mark2) == ([], mark2)


def test_ldif_delta_moves_a_subtree(tmp_path: Path) -> None:
    files = people(tmp_path, changes="")
    connector = ldif_connector(**files)
    mark = connector.current_watermark()
    append(
        files["changes_path"],
        "dn: ou=people,dc=example,dc=org\nchangetype: modrdn\nnewrdn: ou=staff\ndeleteoldrdn: 1\n"
        "newsuperior: ou=corp,dc=example,dc=org\n\n",
    )
    items, _ = delta(connector, mark)
    moved = {i.anchor: i.dn for i in items if isinstance(i, ImportedObject)}
    assert moved[ANN] == "cn=Ann,ou=staff,ou=corp,dc=example,dc=org"
    assert moved["cn=bob,ou=staff,ou=corp,dc=example,dc=org"] == "cn=Bob,ou=staff,ou=corp,dc=example,dc=org"
    assert [i.anchor for i in items if isinstance(i, DeletedObject)] == ["cn=bob,ou=people,dc=example,dc=org"]
    objects, _ = split(connector.full_import())
    assert sorted(o.dn or "" for o in objects) == [
        "cn=Ann,ou=staff,ou=corp,dc=example,dc=org",
        "cn=Bob,ou=staff,ou=corp,dc=example,dc=org",
    ]


def test_ldif_delta_checkpoints_resume_where_they_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ldif, "CHECKPOINT_EVERY", 2)
    files = people(tmp_path, changes="")
    connector = ldif_connector(**files)
    mark = connector.current_watermark()
    for i in range(5):
        append(
            files["changes_path"],
            f"dn: cn=Ann,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: t{i}\n-\n\n",
        )
    items = list(connector.delta_import(mark))
    kinds = ["C" if isinstance(i, Checkpoint) else "O" for i in items]
    assert kinds == ["O", "O", "C", "O", "O", "C", "O", "C"]
    middle = items[5]
    assert isinstance(middle, Checkpoint)
    rest, _ = delta(connector, middle.watermark)
    assert [i.attributes["title"] for i in rest if isinstance(i, ImportedObject)] == [["t4"]]
    # Two records after it: the periodic checkpoint is also the last one, and is not repeated.
    title = "dn: cn=Ann,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: title\ntitle: t5\n-\n\n"
    append(files["changes_path"], title)
    kinds = ["C" if isinstance(i, Checkpoint) else "O" for i in connector.delta_import(middle.watermark)]
    assert kinds == ["O", "O", "C"]
    # A comment chunk after the last record moves the watermark past it.
    append(files["changes_path"], "# a comment after the last record\n\n")
    end = connector.current_watermark()
    assert list(connector.delta_import(middle.watermark))[-1] == Checkpoint(end)
    assert list(connector.delta_import(end)) == [Checkpoint(end)]


def test_ldif_capabilities_follow_the_config(tmp_path: Path) -> None:
    files = people(tmp_path, changes="")
    out = tmp_path / "out.ldif"
    cases = [
        ({"path": files["path"]}, ["full-import", "test-connection"]),
        ({**files}, ["full-import", "delta-import", "test-connection"]),
        (
            {"path": files["path"], "export_path": out},
            ["full-import", "export", "batch-export", "test-connection"],
        ),
        (
            {**files, "export_path": out},
            ["full-import", "delta-import", "export", "batch-export", "test-connection"],
        ),
    ]
    for overrides, expected in cases:
        assert base.capabilities(ldif_connector(**overrides)) == expected


def test_ldif_config_errors(tmp_path: Path) -> None:
    files = people(tmp_path, changes="")
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "give path"),
        ({"path": tmp_path / "missing.ldif"}, "file not found"),
        ({"changes_path": tmp_path / "missing.ldif"}, "create it empty"),
        ({"path": files["path"], "changes_path": files["path"]}, "file of its own"),
        ({**files, "export_path": tmp_path / "no" / "out.ldif"}, "not found"),
        ({**files, "export_path": tmp_path}, "is a directory"),
        ({**files, "object_classes": {}}, "at least one"),
        ({**files, "password": "x"}, "Extra inputs"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValidationError, match=message):
            LdifConnectorConfig.model_validate({"kind": "ldif", **overrides})
    # The export file may be the imported file before the first export made it.
    out = tmp_path / "out.ldif"
    connector = ldif_connector(path=out, export_path=out)
    assert list(connector.full_import()) == []
    connector.test_connection()


# ====================================================================== LDIF export
def ldif_exporter(tmp_path: Path, **overrides: Any) -> Any:
    out = tmp_path / "out.ldif"
    return ldif_connector(path=out, export_path=out, **overrides)


def test_ldif_export_writes_a_sorted_readable_image(tmp_path: Path) -> None:
    connector = ldif_exporter(tmp_path, anchor_attribute="employeeNumber")
    photo = "base64:" + base64.b64encode(bytes(range(200))).decode()
    results = connector.apply_batch(
        [
            export(
                "add",
                dn="cn=Zoë Åström,ou=people,dc=x",
                attributes={"sn": ["Åström"], "employeeNumber": ["E2"], "jpegPhoto": [photo]},
            ),
            export(
                "add",
                dn="cn=Ann,ou=people,dc=x",
                attributes={"objectClass": ["top"], "sn": ["Lee"], "employeeNumber": ["E1"], "title": [" x"]},
            ),
        ]
    )
    assert [(r.anchor, r.dn) for r in results] == [
        ("E2", "cn=Zoë Åström,ou=people,dc=x"),
        ("E1", "cn=Ann,ou=people,dc=x"),
    ]
    text = (tmp_path / "out.ldif").read_text("ascii")  # everything not plain ASCII is base64
    assert text.startswith(
        "version: 1\n\n"
        "dn: cn=Ann,ou=people,dc=x\n"
        "objectClass: top\n"
        "objectClass: inetOrgPerson\n"
        "cn: Ann\n"
        "employeeNumber: E1\n"
        "sn: Lee\n"
        "title:: IHg=\n\n"
        "dn:: "
    )
    assert all(len(line) <= 76 for line in text.splitlines())
    objects, failures = split(connector.full_import())
    assert failures == []
    assert [(o.anchor, o.dn) for o in objects] == [
        ("E1", "cn=Ann,ou=people,dc=x"),
        ("E2", "cn=Zoë Åström,ou=people,dc=x"),
    ]
    assert objects[1].attributes == {
        "objectClass": ["inetOrgPerson"],
        "cn": ["Zoë Åström"],
        "employeeNumber": ["E2"],
        "jpegPhoto": [photo],
        "sn": ["Åström"],
    }


def test_ldif_export_update_rename_delete(tmp_path: Path) -> None:
    connector = ldif_exporter(tmp_path)
    added = connector.apply(export("add", dn="cn=Ann,dc=x", attributes={"mail": ["a@x", "b@x"], "sn": ["L"]}))
    assert added == ExportOutcome(anchor="cn=ann,dc=x", dn="cn=Ann,dc=x")

    # Value-level changes on a multi-valued attribute; attribute names match case-insensitively.
    connector.apply(
        export(
            "update",
            dn="cn=Ann,dc=x",
            attributes={
                "MAIL": AttrChange(op="add", values=["c@x", "a@x"]),
                "mail": AttrChange(op="delete", values=["b@x", "zz@x"]),
                "sn": AttrChange(op="delete", values=[]),
                "title": AttrChange(op="replace", values=["Boss"]),
            },
        )
    )
    [ann] = split(connector.full_import())[0]
    assert ann.attributes == {
        "objectClass": ["inetOrgPerson"],
        "cn": ["Ann"],
        "mail": ["a@x", "c@x"],
        "title": ["Boss"],
    }

    # Anchored by DN: a rename changes the anchor; the old RDN value goes, the new one comes.
    moved = connector.apply(
        export("rename", anchor=added.anchor, dn="cn=Ann,dc=x", new_dn="cn=Anna,ou=p,dc=x")
    )
    assert moved == ExportOutcome(anchor="cn=anna,ou=p,dc=x", dn="cn=Anna,ou=p,dc=x")
    # Re-delivered by DN (no anchor): already there.
    again = connector.apply(export("rename", dn="cn=Ann,dc=x", new_dn="cn=Anna,ou=p,dc=x"))
    assert again == moved
    [anna] = split(connector.full_import())[0]
    assert (anna.anchor, anna.attributes["cn"]) == ("cn=anna,ou=p,dc=x", ["Anna"])

    with pytest.raises(DataError) as info:
        connector.apply(export("update", anchor=added.anchor, dn="cn=Ann,dc=x", attributes={"sn": ["x"]}))
    assert info.value.error_type == "cd-missing-object"

    gone = connector.apply(export("delete", dn="cn=ANNA, ou=p,dc=x"))
    assert gone.actions == ()
    assert connector.apply(export("delete", dn="cn=Anna,ou=p,dc=x")).actions == ("already-deleted",)
    assert list(connector.full_import()) == []


def test_ldif_export_rejections(tmp_path: Path) -> None:
    connector = ldif_exporter(tmp_path)
    connector.apply(export("add", dn="cn=Ann,dc=x", attributes={"sn": ["L"]}))
    before = (tmp_path / "out.ldif").read_bytes()
    cases = [
        (export("add", object_type="group", dn="cn=g,dc=x"), "schema-violation"),
        (export("add", dn="not a dn", attributes={"sn": ["x"]}), "invalid-dn"),
        (export("add", dn=" ", attributes={"sn": ["x"], "entryUUID": ["u1"]}), "invalid-dn"),
        (export("add", dn="cn=b,dc=x", attributes={"bad name": ["x"]}), "schema-violation"),
        (export("rename", dn="cn=Ann,dc=x"), "rename-missing-new-dn"),
        (export("update", dn="cn=Nobody,dc=x", attributes={"sn": ["x"]}), "cd-missing-object"),
        (export("update", dn="cn=Ann,dc=x", attributes={"entryUUID": ["u"]}), "constraint-violation"),
    ]
    results = connector.apply_batch([e for e, _ in cases])
    assert [getattr(r, "error_type", None) for r in results] == [t for _, t in cases]
    assert (tmp_path / "out.ldif").read_bytes() == before  # nothing applied: not even rewritten
    connector.apply(export("add", dn="cn=Bob,dc=x", attributes={"sn": ["B"]}))
    with pytest.raises(DataError) as info:
        connector.apply(export("rename", dn="cn=Bob,dc=x", new_dn="CN=ann,dc=x"))
    assert info.value.error_type == "rename-to-existing-dn"


def test_ldif_export_file_that_cannot_be_read_back_is_fatal(tmp_path: Path) -> None:
    connector = ldif_exporter(tmp_path, anchor_attribute="sn")
    entry = "objectClass: inetOrgPerson\nsn: S\n"
    (tmp_path / "out.ldif").write_text(f"dn: cn=a,dc=x\n{entry}\ndn: cn=b,dc=x\n{entry}")
    with pytest.raises(FatalError, match="two objects have the anchor 'S'"):
        connector.apply(export("add", dn="cn=c,dc=x", attributes={"sn": ["x"]}))
    connector = ldif_exporter(tmp_path)
    (tmp_path / "out.ldif").write_text(
        "dn: cn=a,dc=x\nobjectClass: inetOrgPerson\ncn: a\n\nthis is not ldif\n"
    )
    with pytest.raises(FatalError, match="cannot be read back"):
        connector.apply(export("add", dn="cn=b,dc=x", attributes={"sn": ["x"]}))


# ====================================================================== CSV export
COLUMNS = {"employee_id": "Employee ID", "uid": "User", "title": "Title", "groups": "Groups"}


def csv_exporter(tmp_path: Path, **overrides: Any) -> Any:
    out = tmp_path / "out.csv"
    config = CsvConnectorConfig.model_validate(
        {
            "kind": "csv",
            "path": out,
            "export_path": out,
            "anchor": "Employee ID",
            "columns": COLUMNS,
            "dn_column": "DN",
            "multi_valued": ["Groups"],
            "multi_value_separator": ";",
            **overrides,
        }
    )
    return open_csv("out", config)


def person(key: str, **attributes: list[str]) -> PendingExport:
    values = {"employee_id": [f"E{key}"], "uid": [key.lower()], **attributes}
    return export("add", dn=f"uid={key.lower()},ou=people", attributes=values)


def test_csv_export_file_layout_and_idempotency(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path)
    assert isinstance(connector, CsvExportConnector)
    assert base.capabilities(connector) == ["full-import", "export", "batch-export", "test-connection"]
    assert not isinstance(
        open_csv("hr", CsvConnectorConfig(kind="csv", path=Path(__file__), anchor="x")), base.Export
    )
    results = connector.apply_batch(
        [person("2", title=["Dev, senior"], groups=["b", "a"]), person("1", title=["Boss"]), person("3")]
    )
    assert [getattr(r, "anchor", None) for r in results] == ["E2", "E1", "E3"]
    assert (tmp_path / "out.csv").read_bytes().decode() == (
        "Employee ID,DN,User,Title,Groups\r\n"
        'E1,"uid=1,ou=people",1,Boss,\r\n'
        'E2,"uid=2,ou=people",2,"Dev, senior",b;a\r\n'
        'E3,"uid=3,ou=people",3,,\r\n'
    )
    # A re-delivered add is an update (no second row); a re-delivered delete is a success.
    again = connector.apply(person("1", title=["Chief"]))
    assert again == ExportOutcome(anchor="E1", dn="uid=1,ou=people", actions=("converted-add-to-update",))
    assert connector.apply(export("delete", anchor="E3", dn="x")) == ExportOutcome("E3", "uid=3,ou=people")
    assert connector.apply(export("delete", anchor="E3", dn="x")).actions == ("already-deleted",)
    objects, failures = split(connector.full_import())
    assert failures == []
    assert [(o.anchor, o.dn, o.attributes) for o in objects] == [
        ("E1", "uid=1,ou=people", {"employee_id": ["E1"], "uid": ["1"], "title": ["Chief"], "groups": []}),
        (
            "E2",
            "uid=2,ou=people",
            {"employee_id": ["E2"], "uid": ["2"], "title": ["Dev, senior"], "groups": ["b", "a"]},
        ),
    ]


def test_csv_export_value_level_changes(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path)
    connector.apply(person("1", groups=["a", "b"]))
    connector.apply(
        export(
            "update",
            anchor="E1",
            dn="uid=1,ou=people",
            attributes={
                "groups": AttrChange(op="add", values=["c", "a"]),
                "title": AttrChange(op="replace", values=["T"]),
            },
        )
    )
    connector.apply(
        export(
            "update",
            anchor="E1",
            dn="uid=1,ou=people",
            attributes={"groups": AttrChange(op="delete", values=["a"])},
        )
    )
    # Located by DN when the export has no anchor (the DN column is there for that).
    connector.apply(
        export("update", dn="UID=1, ou=People", attributes={"title": AttrChange(op="delete", values=[])})
    )
    [obj] = split(connector.full_import())[0]
    assert obj.attributes == {"employee_id": ["E1"], "uid": ["1"], "title": [], "groups": ["b", "c"]}
    moved = connector.apply(export("rename", anchor="E1", dn="uid=1,ou=people", new_dn="uid=1,ou=gone"))
    assert moved == ExportOutcome(anchor="E1", dn="uid=1,ou=gone")
    assert split(connector.full_import())[0][0].dn == "uid=1,ou=gone"


def test_csv_export_data_errors(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path, encoding="cp1252")
    connector.apply(person("1"))
    cases = [
        (export("update", anchor="E9", dn="x", attributes={"title": ["x"]}), "cd-missing-object"),
        (person("2", mail=["m@x"]), "schema-violation"),  # no column for it
        (person("3", title=["a", "b"]), "schema-violation"),  # single-valued column
        (person("4", groups=["a;b"]), "schema-violation"),  # holds the separator
        (person("5", title=["中文"]), "schema-violation"),  # not in cp1252
        (export("add", dn="uid=6", attributes={"uid": ["6"]}), "schema-violation"),  # no anchor value
        (
            export("add", object_type="group", dn="cn=g", attributes={"employee_id": ["G"]}),
            "schema-violation",
        ),
        (export("update", anchor="E1", dn="x", attributes={"employee_id": ["E7"]}), "constraint-violation"),
        (export("add", dn="UID=1,ou=people", attributes={"employee_id": ["E8"]}), "cd-existing-object"),
        (person("9"), None),
    ]
    results = connector.apply_batch([e for e, _ in cases])
    assert [getattr(r, "error_type", None) for r in results] == [t for _, t in cases]
    assert "'mail' has no column" in str(results[1])
    # Objects without a DN do not collide on it.
    no_dn = [export("add", attributes={"employee_id": [f"N{i}"]}) for i in range(2)]
    assert [r.dn for r in connector.apply_batch(no_dn) if isinstance(r, ExportOutcome)] == [None, None]
    objects, _ = split(connector.full_import())
    assert [o.anchor for o in objects] == ["E1", "E9", "N0", "N1"]


def test_csv_export_without_dn_column_needs_anchors(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path, dn_column=None)
    connector.apply(person("1"))
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "Employee ID,User,Title,Groups"
    with pytest.raises(DataError, match="set dn_column") as info:
        connector.apply(export("delete", dn="uid=1,ou=people"))
    assert info.value.error_type == "cd-missing-object"
    assert [o.anchor for o in split(connector.full_import())[0]] == ["E1"]  # not silently dropped
    assert connector.apply(export("delete", anchor="E1", dn="uid=1,ou=people")).anchor == "E1"


def test_csv_export_sees_out_of_band_edits(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path)
    connector.apply(person("1"))
    connector.apply(person("2"))
    out = tmp_path / "out.csv"
    out.write_text(out.read_text().replace("E2,", "E77,"))  # an operator edits the file in place
    connector.apply(person("3"))
    assert [o.anchor for o in split(connector.full_import())[0]] == ["E1", "E3", "E77"]


def test_csv_export_preserves_encoding_and_delimiter(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path, encoding="utf-16", delimiter="\t")
    connector.apply(person("1", title=["Zoë"]))
    connector.apply(person("2", title=["Søren"]))
    data = (tmp_path / "out.csv").read_bytes()
    assert data.startswith("\ufeff".encode("utf-16-le")) and data.count(b"\xff\xfe") == 1
    assert data.decode("utf-16").splitlines()[1] == "E1\tuid=1,ou=people\t1\tZoë\t"
    assert [o.attributes["title"] for o in split(connector.full_import())[0]] == [["Zoë"], ["Søren"]]


def test_csv_export_config(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    good: dict[str, Any] = {
        "kind": "csv",
        "path": out,
        "export_path": out,
        "anchor": "id",
        "columns": {"x": "X"},
    }
    CsvConnectorConfig.model_validate(good)  # the export file need not exist yet
    bad: list[tuple[dict[str, Any], str]] = [
        ({"columns": {}}, "needs columns"),
        ({"dn_column": "id"}, "must not also be the anchor"),
        ({"dn_column": "X"}, "must not also be"),
        ({"columns": {"x": "X", "y": "X"}}, "mapped twice"),
        ({"columns": {"x": ""}}, "must not be empty"),
        ({"export_path": tmp_path / "no" / "out.csv", "path": Path(__file__)}, "not found"),
        ({"path": tmp_path / "other.csv"}, "file not found"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValidationError, match=message):
            CsvConnectorConfig.model_validate({**good, **overrides})


# ====================================================================== atomic writes
def test_batch_writes_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.files import exportfile

    writes: list[Path] = []

    def counting(path: Path, write: Any) -> None:
        writes.append(path)
        atomic_write(path, write)

    monkeypatch.setattr(exportfile, "atomic_write", counting)
    connector = csv_exporter(tmp_path)
    connector.apply_batch([person(str(i)) for i in range(20)])
    assert len(writes) == 1
    connector.apply(person("x"))
    assert len(writes) == 2
    connector.apply_batch([export("update", anchor="none", dn="x", attributes={"uid": ["u"]})])
    assert len(writes) == 2  # nothing applied: nothing written


def test_a_failed_write_leaves_the_file_and_the_image(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path)
    connector.apply(person("1"))
    out = tmp_path / "out.csv"
    before = out.read_bytes()

    def broken(image: Any, stream: io.BufferedWriter) -> None:
        stream.write(b"Employee ID,DN\r\nhalf a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    dump, connector._file._dump = connector._file._dump, broken
    results = connector.apply_batch(
        [person("2"), export("update", anchor="E9", dn="x", attributes={"uid": ["u"]})]
    )
    assert isinstance(results[0], RetriableError) and results[0].error_type == "export-file-write-failed"
    assert "No space left" in results[0].message
    assert isinstance(results[1], DataError) and results[1].error_type == "cd-missing-object"
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []
    connector._file._dump = dump
    connector.apply(person("3"))  # the failed add did not stay in the image
    assert [o.anchor for o in split(connector.full_import())[0]] == ["E1", "E3"]


def test_a_vanished_export_directory_is_fatal(tmp_path: Path) -> None:
    directory = tmp_path / "exports"
    directory.mkdir()
    connector = csv_exporter(directory)
    connector.apply(person("1"))
    connector.test_connection()
    # (Permissions cannot be taken away from root, who may run the tests; a missing directory fails anyone.)
    directory.rename(tmp_path / "moved")
    with pytest.raises(FatalError) as info:
        connector.apply(person("2"))
    assert info.value.error_type == "export-file-unwritable"
    assert str(directory / "out.csv") in info.value.message
    with pytest.raises(FatalError) as info:
        connector.test_connection()
    assert info.value.error_type == "no-start-export-file-unwritable"
    (tmp_path / "moved").rename(directory)
    connector.apply(person("3"))
    assert [o.anchor for o in split(connector.full_import())[0]] == ["E1", "E3"]


def test_write_error_mapping(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert isinstance(write_error("c", path, OSError(errno.ENOSPC, "full")), RetriableError)
    assert isinstance(write_error("c", path, OSError(errno.EIO, "io")), RetriableError)
    for code in (errno.EACCES, errno.EROFS, errno.ENOENT):
        err = write_error("c", path, OSError(code, "no"))
        assert isinstance(err, FatalError) and str(path) in err.message


def test_atomic_write_keeps_permissions_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write(path, lambda f: f.write(b"one"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    atomic_write(path, lambda f: f.write(b"two"))
    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == (b"two", 0o640)

    def failing(f: Any) -> None:
        f.write(b"partial")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"two"
    assert leftovers(tmp_path) == []


def test_readers_never_see_a_partial_export_file(tmp_path: Path) -> None:
    connector = csv_exporter(tmp_path)
    connector.apply_batch([person(str(i), title=["x" * 500]) for i in range(200)])
    out = tmp_path / "out.csv"
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            with out.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows[0] != ["Employee ID", "DN", "User", "Title", "Groups"] or any(len(r) != 5 for r in rows):
                problems.append(repr(rows[-1]))
            if any(r[3] not in ("x" * 500, "y" * 500) for r in rows[1:]):
                problems.append("torn value")
            seen.append(len(rows) - 1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200, 260):
            connector.apply_batch(
                [person(str(i), title=["y" * 500]), export("delete", anchor=f"E{i - 200}", dn="x")]
            )
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert seen and set(seen) == {200}  # each batch adds one and deletes one
    assert leftovers(tmp_path) == []


# ====================================================================== registration
def test_kinds_build_from_a_config_file(tmp_path: Path) -> None:
    from schemas.config import IdsyncConfig

    feed = tmp_path / "feed.jsonl"
    feed.write_text('{"id": 1}\n')
    hr = tmp_path / "hr.csv"
    hr.write_text("id\n1\n")
    registry.load()
    config = IdsyncConfig.model_validate(
        {
            "connectors": {
                "feed": {"kind": "jsonl", "path": str(feed), "anchor": "id"},
                "dir": {
                    "kind": "ldif",
                    "path": str(tmp_path / "o.ldif"),
                    "export_path": str(tmp_path / "o.ldif"),
                },
                "hr": {"kind": "csv", "path": str(hr), "anchor": "id"},
                "out": {
                    "kind": "csv",
                    "path": str(hr),
                    "anchor": "id",
                    "export_path": str(tmp_path / "x.csv"),
                    "columns": {"name": "Name"},
                },
            }
        }
    )
    built = {name: registry.build_connector(name, c) for name, c in config.connectors.items()}
    assert type(built["feed"]) is JsonlConnector
    assert isinstance(built["dir"], LdifConnector) and isinstance(built["dir"], base.Export)
    assert type(built["hr"]) is CsvConnector
    assert type(built["out"]) is CsvExportConnector
