"""Connector kinds by entry point: every built-in kind registered, config errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import registry
from connectors.base import capabilities
from schemas.errors import ConfigError
from streams.config import parse_config


def test_every_builtin_kind_is_registered_by_entry_point() -> None:
    kinds = registry.load()
    assert {"csv", "jsonl", "ldif", "ldap", "sql", "scim"} <= set(kinds)
    for name, kind in kinds.items():
        assert kind.config_model.model_fields["kind"].annotation is not str, name


def test_unknown_kind_names_the_field_and_the_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"connectors": {"hr": {"kind": "workday"}}}, tmp_path)
    text = str(err.value)
    assert text.startswith("connectors.hr.kind:")
    assert "'csv'" in text and "'ldap'" in text and "'sql'" in text


def test_field_errors_keep_their_path_inside_a_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"connectors": {"hr": {"kind": "csv", "path": "missing.csv", "anchor": "id"}}}, tmp_path)
    assert "connectors.hr.path: file not found" in str(err.value)


def test_a_connector_is_built_from_its_kind(tmp_path: Path) -> None:
    (tmp_path / "hr.csv").write_text("id,name\n1,Ann\n")
    config = parse_config({"connectors": {"hr": {"kind": "csv", "path": "hr.csv", "anchor": "id"}}}, tmp_path)
    conn = registry.build_connector("hr", config.connectors["hr"])
    try:
        assert conn.name == "hr"
        assert "full-import" in capabilities(conn)
    finally:
        conn.close()


def test_file_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "people.ldif").write_text("version: 1\n")
    (tmp_path / "out").mkdir()
    config = parse_config(
        {
            "connectors": {
                "dir": {"kind": "ldif", "path": "people.ldif", "export_path": "out/people.ldif"},
            }
        },
        tmp_path,
    )
    conn = config.connectors["dir"]
    assert Path(conn.path) == tmp_path / "people.ldif"  # type: ignore[attr-defined]
    assert Path(conn.export_path) == tmp_path / "out" / "people.ldif"  # type: ignore[attr-defined]
