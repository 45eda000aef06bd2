"""CLI commands that need no broker: schema export and config checking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.cli import main
from streams.samples.generate_hr import generate, write_csv

DEMO = Path(__file__).parents[2] / "streams" / "samples" / "demo.yaml"


def test_schema_export_writes_every_topic_contract(tmp_path: Path) -> None:
    assert main(["schema", "export", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "mv.changes.schema.json" in names
    assert "import.connector.schema.json" in names
    assert "export.connector.schema.json" in names
    assert "watermarks.schema.json" in names
    mv = json.loads((tmp_path / "mv.changes.schema.json").read_text())
    assert set(mv["required"]) >= {
        "op",
        "mv_id",
        "object_type",
        "attributes",
        "changed",
        "connectors",
        "ts_ms",
    }
    imp = json.loads((tmp_path / "import.connector.schema.json").read_text())
    assert "discriminator" in json.dumps(imp)  # change records and run markers, told apart by op


def test_check_config_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(generate(5, 1), tmp_path / "hr.csv")
    monkeypatch.setenv("IDSYNC_DEMO_HR", str(tmp_path / "hr.csv"))
    monkeypatch.setenv("IDSYNC_LDAP_URI", "ldap://127.0.0.1:1")
    monkeypatch.setenv("IDSYNC_LDAP_PASSWORD", "not-printed")
    assert main(["check-config", "-c", str(DEMO)]) == 0
    assert "2 connectors" in capsys.readouterr().out


def test_check_config_names_field_and_missing_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IDSYNC_LDAP_URI", raising=False)
    monkeypatch.setenv("IDSYNC_DEMO_HR", str(tmp_path / "nope.csv"))
    assert main(["check-config", "-c", str(DEMO)]) == 2
    assert "environment variable IDSYNC_LDAP_URI is not set" in capsys.readouterr().err
    monkeypatch.setenv("IDSYNC_LDAP_URI", "ldap://127.0.0.1:1")
    monkeypatch.setenv("IDSYNC_LDAP_PASSWORD", "s3cret-value")
    assert main(["check-config", "-c", str(DEMO)]) == 2
    err = capsys.readouterr().err
    assert "connectors.hr.path: file not found" in err
    assert "s3cret-value" not in err


def test_bad_outbound_reference_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(generate(3, 1), tmp_path / "hr.csv")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "connectors:\n  hr: {kind: csv, path: hr.csv, anchor: employee_id}\n"
        "outbound:\n  - {connector: nowhere, dn: 'uid={uid},dc=x'}\n"
    )
    assert main(["check-config", "-c", str(cfg)]) == 2
    assert "outbound[0].connector: unknown connector 'nowhere'" in capsys.readouterr().err


def test_bench_pipeline_settings_are_checked_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--pipeline", "state_cash_mb=256"])
    assert "state_cache_mb" in capsys.readouterr().err  # the known keys are named
    with pytest.raises(SystemExit):
        main(["bench", "--pipeline", "partitions=8"])
    assert "use --partitions" in capsys.readouterr().err


def test_check_config_advises_a_group_rule_whose_add_does_not_wait_for_a_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An LDAP groupOfNames must hold a member: a valid configuration whose group rule neither waits for one
    (``requires``) nor exports one is accepted, with advice; one that waits gets none."""
    write_csv(generate(3, 1), tmp_path / "hr.csv")

    def config(group_rule: str) -> Path:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "connectors:\n"
            "  hr: {kind: csv, path: hr.csv, anchor: employee_id}\n"
            "  dir: {kind: ldap, uri: 'ldap://127.0.0.1:1', base_dn: 'dc=x'}\n"
            "metaverse: {group: {attributes: {member: {reference: true, multi_valued: true}}}}\n"
            "outbound:\n"
            "  - {connector: dir, mv_type: group, object_type: group, dn: 'cn={name},dc=x',\n"
            f"     {group_rule}}}\n"
        )
        return cfg

    def check(group_rule: str) -> str:
        assert main(["check-config", "-c", str(config(group_rule))]) == 0
        return capsys.readouterr().out

    flows = "flows: [{target: objectClass, constant: [top, groupOfNames]}, {target: cn, source: name}"
    member = ", {target: member, source: member}]"
    out = check(flows + member)
    assert "advice: outbound[0] (dir, group): groupOfNames entries must hold member; without requires" in out
    out = check(flows + "]")
    assert "no flow exports member, which groupOfNames entries must hold: every add will fail" in out
    assert "advice" not in check(flows + member + ", requires: [member]")
