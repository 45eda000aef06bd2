"""CsvConnector on real files, and the sample HR feed generator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from connectors.base import Connector, FullImport, ImportedObject, ImportFailure
from connectors.csv import CsvConnector
from schemas.config import CsvConnectorConfig
from schemas.errors import FatalError
from streams.samples.generate_hr import COLUMNS, generate, write_csv

SAMPLE = Path(__file__).resolve().parents[2] / "streams" / "samples" / "hr.csv"


def _connector(path: Path, **overrides: object) -> CsvConnector:
    config = CsvConnectorConfig.model_validate({"kind": "csv", "path": path, "anchor": "id", **overrides})
    return CsvConnector("hr", config)


def _write(tmp_path: Path, content: str | bytes, name: str = "hr.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def _split(results: list[ImportedObject | ImportFailure]) -> tuple[list[ImportedObject], list[ImportFailure]]:
    objects = [r for r in results if isinstance(r, ImportedObject)]
    failures = [r for r in results if isinstance(r, ImportFailure)]
    return objects, failures


def _import(path: Path, **overrides: object) -> tuple[list[ImportedObject], list[ImportFailure]]:
    return _split(list(_connector(path, **overrides).full_import()))


# --------------------------------------------------------------------------- normal import
def test_protocols(tmp_path: Path) -> None:
    connector = _connector(_write(tmp_path, "id\n1\n"))
    assert isinstance(connector, Connector)
    assert isinstance(connector, FullImport)
    assert connector.name == "hr"
    connector.close()


def test_values_nulls_and_multi_valued(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        " id , name ,groups, phone\n E1 ,Ann Lee,admins; staff ;;staff,\nE2,Bob,,  \n",
    )
    objects, failures = _import(path, multi_valued=["groups"], multi_value_separator=";", object_type="user")
    assert failures == []
    assert objects == [
        ImportedObject(
            anchor="E1",
            object_type="user",
            attributes={"id": [" E1 "], "name": ["Ann Lee"], "groups": ["admins", "staff"], "phone": []},
            dn=None,
            locator="hr.csv:2",
        ),
        ImportedObject(
            anchor="E2",
            object_type="user",
            attributes={"id": ["E2"], "name": ["Bob"], "groups": [], "phone": []},
            dn=None,
            locator="hr.csv:3",
        ),
    ]


def test_multi_line_field_shifts_locators(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'id,note\r\n1,"first\r\nsecond\r\nthird"\r\n\r\n2,plain\r\n3,"a, b"\r\n',
    )
    objects, failures = _import(path)
    assert failures == []
    assert [(o.anchor, o.locator) for o in objects] == [
        ("1", "hr.csv:2"),
        ("2", "hr.csv:6"),
        ("3", "hr.csv:7"),
    ]
    assert objects[0].attributes["note"] == ["first\r\nsecond\r\nthird"]
    assert objects[2].attributes["note"] == ["a, b"]


def test_delimiter_encoding_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "id;name\n1;Zoë Müller\n".encode("cp1252"))
    objects, failures = _import(path, delimiter=";", encoding="cp1252")
    assert failures == []
    assert objects[0].attributes["name"] == ["Zoë Müller"]

    bom = _write(tmp_path, "\ufeffid,name\n1,Łukasz\n".encode(), name="bom.csv")
    objects, failures = _import(bom)
    assert failures == []
    assert objects[0].attributes == {"id": ["1"], "name": ["Łukasz"]}


def test_utf16_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name\n1,Søren\n2,José\n".encode("utf-16"))
    objects, failures = _import(path, encoding="utf-16")
    assert failures == []
    assert [(o.anchor, o.attributes["name"], o.locator) for o in objects] == [
        ("1", ["Søren"], "hr.csv:2"),
        ("2", ["José"], "hr.csv:3"),
    ]


# --------------------------------------------------------------------------- per-row failures
def test_malformed_row_is_reported_and_import_goes_on(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name,mail\n1,Ann,a@x\n2,Bob\n3,Cy,c@x,extra\n4,Di,d@x\n")
    objects, failures = _import(path)
    assert [o.anchor for o in objects] == ["1", "4"]
    assert [(f.locator, f.error_type) for f in failures] == [
        ("hr.csv:3", "import-malformed-row"),
        ("hr.csv:4", "import-malformed-row"),
    ]
    assert "expected 3 fields, got 2" in failures[0].message
    assert "expected 3 fields, got 4" in failures[1].message
    assert failures[0].raw == "2,Bob"


def test_bad_quoting_is_reported_and_import_goes_on(tmp_path: Path) -> None:
    path = _write(tmp_path, 'id,name\n1,Ann\n2,"Bob"by\n3,Cy\n4,"Di\n5,Ed\n')
    objects, failures = _import(path)
    assert [o.anchor for o in objects] == ["1", "3"]
    assert [(f.locator, f.error_type) for f in failures] == [
        ("hr.csv:3", "import-malformed-row"),
        ("hr.csv:5", "import-malformed-row"),
    ]
    assert "unparsable row" in failures[0].message
    assert "lines 5-6" in failures[1].message  # an unclosed quote runs to the end of the file


def test_missing_anchor(tmp_path: Path) -> None:
    path = _write(tmp_path, "name,id\nAnn,1\nBob,\nCy,   \nDi,4\n")
    objects, failures = _import(path)
    assert [o.anchor for o in objects] == ["1", "4"]
    assert [(f.locator, f.error_type) for f in failures] == [
        ("hr.csv:3", "import-missing-anchor"),
        ("hr.csv:4", "import-missing-anchor"),
    ]
    assert "'id'" in failures[0].message
    assert failures[0].raw == "Bob,"


def test_duplicate_anchor(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name\n1,Ann\n2,Bob\n 1 ,Ann again\n3,Cy\n")
    objects, failures = _import(path)
    assert [(o.anchor, o.attributes["name"]) for o in objects] == [
        ("1", ["Ann"]),
        ("2", ["Bob"]),
        ("3", ["Cy"]),
    ]
    assert len(failures) == 1
    failure = failures[0]
    assert (failure.locator, failure.error_type) == ("hr.csv:4", "import-duplicate-anchor")
    assert "line 2" in failure.message
    assert failure.raw == " 1 ,Ann again"


def test_decode_error(tmp_path: Path) -> None:
    content = b'id,name\n1,Ann\n2,B\xffb\n3,"multi\nline \xc3\x28"\n4,Zo\xc3\xab\n'
    objects, failures = _import(_write(tmp_path, content))
    assert [(o.anchor, o.attributes["name"], o.locator) for o in objects] == [
        ("1", ["Ann"], "hr.csv:2"),
        ("4", ["Zoë"], "hr.csv:6"),
    ]
    assert [(f.locator, f.error_type) for f in failures] == [
        ("hr.csv:3", "import-decode-error"),
        ("hr.csv:4", "import-decode-error"),
    ]
    assert failures[0].raw is not None and failures[0].raw.startswith("2,B")


def test_raw_is_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name\n1," + "x" * 2000 + ",extra\n")
    _, failures = _import(path)
    assert failures[0].raw is not None and len(failures[0].raw) == 500


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    objects, failures = _import(_write(tmp_path, "id,name\n\n1,Ann\n\n\n2,Bob\n\n"))
    assert failures == []
    assert [(o.anchor, o.locator) for o in objects] == [("1", "hr.csv:3"), ("2", "hr.csv:6")]


# --------------------------------------------------------------------------- fatal errors
def test_missing_anchor_column_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "employee,name\n1,Ann\n")
    with pytest.raises(FatalError, match=r"anchor column 'id'") as info:
        list(_connector(path).full_import())
    assert str(path) in str(info.value)


def test_missing_multi_valued_column_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name\n1,Ann\n")
    with pytest.raises(FatalError, match=r"'groups'"):
        list(_connector(path, multi_valued=["groups"], multi_value_separator=";").full_import())


def test_multi_valued_without_separator_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="multi_value_separator"):
        _connector(_write(tmp_path, "id\n1\n"), multi_valued=["id"])


def test_empty_file_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(FatalError, match="no header row") as info:
        list(_connector(path).full_import())
    assert str(path) in str(info.value)


def test_duplicate_column_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="duplicate column"):
        list(_connector(_write(tmp_path, "id,name, name\n1,a,b\n")).full_import())


def test_missing_file_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "id\n1\n")
    connector = _connector(path)
    path.unlink()
    with pytest.raises(FatalError) as info:
        list(connector.full_import())
    assert str(path) in str(info.value)


def test_unknown_encoding_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="no-such-codec"):
        _connector(_write(tmp_path, "id\n1\n"), encoding="no-such-codec")


# --------------------------------------------------------------------------- sample generator
@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, str]]:
    return generate(300, 7)


def test_generator_is_deterministic(sample_rows: list[dict[str, str]]) -> None:
    assert generate(300, 7) == sample_rows
    assert generate(300, 8) != sample_rows
    assert generate(50, 3) == generate(50, 3)


def test_generator_columns_and_values(sample_rows: list[dict[str, str]]) -> None:
    assert len(sample_rows) == 300
    assert all(tuple(row) == COLUMNS for row in sample_rows)
    for row in sample_rows:
        assert re.fullmatch(r"E\d{5}", row["employee_id"])
        assert re.fullmatch(r"[a-z0-9]{1,20}", row["uid"]), row["uid"]
        assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+@example\.org", row["email"]), row["email"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["hire_date"])
        assert row["status"] in {"active", "terminated", "leave"}
        assert row["first_name"] and row["last_name"] and row["department"] and row["title"]
    statuses = [row["status"] for row in sample_rows]
    assert 3 <= statuses.count("terminated") <= 15
    assert 2 <= statuses.count("leave") <= 12
    assert len({row["department"] for row in sample_rows}) == 10
    assert any(row["preferred_name"] for row in sample_rows)
    assert any(not row["preferred_name"] for row in sample_rows)
    assert any(not (row["first_name"] + row["last_name"]).isascii() for row in sample_rows)
    assert any("'" in row["last_name"] for row in sample_rows)


@pytest.mark.parametrize("column", ["employee_id", "uid", "email"])
def test_generator_unique(sample_rows: list[dict[str, str]], column: str) -> None:
    values = [row[column] for row in sample_rows]
    assert len(set(values)) == len(values)


def test_generator_org_chart(sample_rows: list[dict[str, str]]) -> None:
    by_id = {row["employee_id"]: row for row in sample_rows}
    position = {row["employee_id"]: i for i, row in enumerate(sample_rows)}
    roots = [row for row in sample_rows if not row["manager_id"]]
    assert len(roots) == 1
    ceo = roots[0]["employee_id"]
    for row in sample_rows:
        if row["manager_id"]:
            manager = by_id[row["manager_id"]]  # exists
            if manager["employee_id"] != ceo:
                assert manager["department"] == row["department"]
        seen = {row["employee_id"]}
        while by_id[row["employee_id"]]["manager_id"]:  # walking up always reaches the CEO
            row = by_id[row["manager_id"]]
            assert row["employee_id"] not in seen
            seen.add(row["employee_id"])
        assert row["employee_id"] == ceo
    assert any(
        row["manager_id"] and position[row["manager_id"]] > position[row["employee_id"]]
        for row in sample_rows
    )


def test_generator_small_and_large_counts() -> None:
    assert generate(0, 1) == []
    assert [row["manager_id"] for row in generate(1, 1)] == [""]
    for count in (2, 5, 12):
        rows = generate(count, 1)
        assert len(rows) == count
        assert sum(1 for row in rows if not row["manager_id"]) == 1
    rows = generate(2000, 11)
    assert all(len(row["uid"]) <= 20 for row in rows)
    assert len({row["uid"] for row in rows}) == len({row["email"] for row in rows}) == 2000


def test_committed_sample_matches_generator(tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    out = tmp_path / "hr.csv"
    write_csv(sample_rows, out)
    assert SAMPLE.read_bytes() == out.read_bytes(), (
        "streams/samples/hr.csv is stale: python -m streams.samples.generate_hr --count 300 --seed 7"
    )
    SAMPLE.read_bytes().decode("utf-8")


def test_committed_sample_imports_cleanly(sample_rows: list[dict[str, str]]) -> None:
    objects, failures = _import(SAMPLE, anchor="employee_id")
    assert failures == []
    assert [o.anchor for o in objects] == [row["employee_id"] for row in sample_rows]
    assert objects[0].locator == "hr.csv:2"
    assert objects[-1].locator == "hr.csv:301"
    first = sample_rows[0]
    assert objects[0].attributes == {k: [v] if v else [] for k, v in first.items()}


# --------------------------------------------------------------------------- header mapping
def test_header_mapping_renames_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "Employee ID,E-Mail,Groups,note\nE1,ann@x,a;b,hi\n")
    columns = {"employee_id": "Employee ID", "mail": "E-Mail", "groups": "Groups"}
    objects, failures = _import(
        path,
        anchor="Employee ID",
        columns=columns,
        multi_valued=["Groups"],
        multi_value_separator=";",
    )
    assert failures == []
    assert objects == [
        ImportedObject(
            anchor="E1",
            object_type="person",
            attributes={"employee_id": ["E1"], "mail": ["ann@x"], "groups": ["a", "b"], "note": ["hi"]},
            dn=None,
            locator="hr.csv:2",
        )
    ]


def test_dn_column_is_the_dn_not_an_attribute(tmp_path: Path) -> None:
    path = _write(tmp_path, 'id,dn,name\n1,"uid=ann,ou=people",Ann\n2,,Bob\n')
    objects, failures = _import(path, dn_column="dn")
    assert failures == []
    assert [(o.dn, o.attributes) for o in objects] == [
        ("uid=ann,ou=people", {"id": ["1"], "name": ["Ann"]}),
        (None, {"id": ["2"], "name": ["Bob"]}),
    ]


def test_mapped_column_missing_from_the_header_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,name\n1,Ann\n")
    with pytest.raises(FatalError, match=r"column \(of attribute 'mail'\) 'E-Mail' not in the header"):
        list(_connector(path, columns={"mail": "E-Mail"}).full_import())
    with pytest.raises(FatalError, match="dn_column 'DN' not in the header"):
        list(_connector(path, dn_column="DN").full_import())


def test_two_columns_giving_one_attribute_is_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,mail,E-Mail\n1,a,b\n")
    with pytest.raises(FatalError, match="columns 'mail' and 'E-Mail' both give attribute 'mail'"):
        list(_connector(path, columns={"mail": "E-Mail"}).full_import())


def test_connection_check(tmp_path: Path) -> None:
    path = _write(tmp_path, "id\n1\n")
    connector = _connector(path)
    connector.test_connection()
    path.unlink()
    with pytest.raises(FatalError) as info:
        connector.test_connection()
    assert info.value.error_type == "no-start-file-not-found"
