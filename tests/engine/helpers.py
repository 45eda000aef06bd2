"""Builders shared by the engine tests: a demo-like configuration, change records, contributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.flow import import_flows
from engine.rules import Rules, compile_rules
from schemas.config import IdsyncConfig
from schemas.messages import ExportResult, MVContribution, MVDisconnect
from schemas.records import Attrs
from schemas.state import ConnectorState, CSObject
from schemas.wire import ChangeRecord, PendingExport, Source

HR_CSV = Path(__file__).resolve().parents[2] / "streams" / "samples" / "hr.csv"

PEOPLE = "ou=people,dc=example,dc=org"
DISABLED = "ou=disabled,dc=example,dc=org"
OBJECT_CLASSES = ["top", "person", "organizationalPerson", "inetOrgPerson"]


def demo_config_dict(**overrides: Any) -> dict[str, Any]:
    """The demo configuration (streams/samples/demo.yaml) plus a low-precedence ``badge`` source."""
    cfg: dict[str, Any] = {
        "name": "demo",
        "connectors": {
            "hr": {"kind": "csv", "path": str(HR_CSV), "object_type": "employee", "anchor": "employee_id"},
            "badge": {"kind": "csv", "path": str(HR_CSV), "object_type": "badge", "anchor": "badge_id"},
            "ldap": {
                "kind": "ldap",
                "uri": "ldap://ldap.invalid",
                "base_dn": "dc=example,dc=org",
                "object_classes": {"person": "inetOrgPerson"},
            },
        },
        "metaverse": {"person": {"deletion": {"rule": "source-disconnects", "sources": ["hr"]}}},
        "inbound": [
            {
                "connector": "hr",
                "object_type": "employee",
                "mv_type": "person",
                "join": [{"cs": "employee_id", "mv": "employeeId"}],
                "project": True,
                "precedence": 10,
                "filter": [[{"attribute": "department", "operator": "equal", "value": "Contractors"}]],
                "flows": [
                    {"mv": "employeeId", "source": "employee_id"},
                    {"mv": "givenName", "source": "first_name"},
                    {"mv": "sn", "source": "last_name"},
                    {"mv": "displayName", "template": "{first_name} {last_name}"},
                    {"mv": "mail", "source": "email"},
                    {"mv": "uid", "source": "uid"},
                    {"mv": "department", "source": "department"},
                    {"mv": "title", "source": "title"},
                    {"mv": "location", "source": "location"},
                    {"mv": "status", "source": "status"},
                ],
            },
            {
                "connector": "badge",
                "object_type": "badge",
                "mv_type": "person",
                "join": [{"cs": "employee", "mv": "employeeId"}],
                "project": False,
                "precedence": 50,
                "flows": [{"mv": "mail", "source": "email"}, {"mv": "location", "source": "site"}],
            },
            {
                "connector": "ldap",
                "object_type": "person",
                "mv_type": "person",
                "join": [{"cs": "employeeNumber", "mv": "employeeId"}],
                "project": False,
            },
        ],
        "outbound": [
            {
                "connector": "ldap",
                "mv_type": "person",
                "object_type": "person",
                "scope": [[{"attribute": "status", "operator": "notequal", "value": "terminated"}]],
                "dn": "cn={givenName} {sn} ({uid})," + PEOPLE,
                "flows": [
                    {"target": "objectClass", "constant": OBJECT_CLASSES},
                    {"target": "cn", "template": "{givenName} {sn} ({uid})"},
                    {"target": "sn", "source": "sn"},
                    {"target": "givenName", "source": "givenName"},
                    {"target": "displayName", "source": "displayName"},
                    {"target": "mail", "source": "mail", "allow_null": True},
                    {"target": "uid", "source": "uid"},
                    {"target": "employeeNumber", "source": "employeeId"},
                    {"target": "departmentNumber", "source": "department", "allow_null": True},
                    {"target": "title", "source": "title", "allow_null": True},
                    {"target": "l", "source": "location", "allow_null": True},
                ],
                "deprovision": {
                    "action": "disable",
                    "disable": {"move_to": DISABLED, "set": {"employeeType": ["disabled"]}},
                },
            }
        ],
    }
    cfg.update(overrides)
    return cfg


def demo_config(**overrides: Any) -> IdsyncConfig:
    return IdsyncConfig.model_validate(demo_config_dict(**overrides))


def demo_rules(**overrides: Any) -> Rules:
    return compile_rules(demo_config(**overrides))


def hr_attrs(**changes: str | None) -> Attrs:
    """One HR row (as the CSV connector stages it); keyword None removes a column."""
    row = {
        "employee_id": "E1",
        "first_name": "Gabriel",
        "last_name": "White",
        "email": "gabriel.white@example.org",
        "uid": "gwhite",
        "department": "Engineering",
        "title": "Senior QA Engineer",
        "location": "London",
        "status": "active",
    }
    for k, v in changes.items():
        if v is None:
            row.pop(k, None)
        else:
            row[k] = v
    return {k: [v] for k, v in row.items()}


def record(
    anchor: str = "E1",
    after: Attrs | None = None,
    *,
    op: str = "r",
    version: int = 1,
    event_id: str | None = None,
    dn: str | None = None,
    connector: str = "hr",
    object_type: str = "employee",
    run_id: str | None = None,
    changes: list[str] | None = None,
    locator: str | None = None,
    ts_ms: int = 1_000,
) -> ChangeRecord:
    return ChangeRecord(
        op=op,
        anchor=anchor,
        object_type=object_type,
        after=None if op == "d" else (after if after is not None else hr_attrs()),
        changes=changes,
        source=Source(
            connector=connector,
            dn=dn,
            version=version,
            event_id=event_id or f"{connector}:{anchor}:{version}",
            run_id=run_id,
            ts_ms=ts_ms,
            locator=locator,
        ),
    )


def cs_object(
    anchor: str = "E1",
    attributes: Attrs | None = None,
    *,
    connector: str = "hr",
    object_type: str = "employee",
    version: int = 1,
    state: ConnectorState = ConnectorState.DISCONNECTOR,
    mv_id: str | None = None,
    join_route: str | None = None,
    dn: str | None = None,
    last_run: str | None = None,
) -> CSObject:
    return CSObject(
        connector=connector,
        anchor=anchor,
        object_type=object_type,
        dn=dn,
        attributes=attributes if attributes is not None else hr_attrs(),
        version=version,
        event_id=f"{connector}:{anchor}:{version}",
        last_run=last_run,
        state=state,
        mv_id=mv_id,
        join_route=join_route,
    )


def hr_contribution(
    rules: Rules,
    mv_id: str,
    attrs: Attrs | None = None,
    *,
    version: int = 1,
    projected: bool = False,
    ts_ms: int | None = None,
    anchor: str = "E1",
) -> MVContribution:
    rule = rules.inbound_rule("hr", "employee")
    assert rule is not None
    attrs = attrs if attrs is not None else hr_attrs()
    return MVContribution(
        mv_id=mv_id,
        mv_type="person",
        connector="hr",
        anchor=anchor,
        dn=None,
        cs_version=version,
        event_id=f"hr:{anchor}:{version}",
        flows=import_flows(rule.flows, attrs),
        projected=projected,
        route=f"person|employeeId={attrs['employee_id'][0]}",
        ts_ms=ts_ms if ts_ms is not None else 1_000 * version,
    )


def badge_contribution(
    mv_id: str, flows: Attrs, *, version: int = 1, ts_ms: int = 1_000, anchor: str = "B1"
) -> MVContribution:
    return MVContribution(
        mv_id=mv_id,
        mv_type="person",
        connector="badge",
        anchor=anchor,
        dn=None,
        cs_version=version,
        event_id=f"badge:{anchor}:{version}",
        flows=flows,
        route="person|employeeId=E1",
        ts_ms=ts_ms,
    )


def ldap_contribution(
    mv_id: str,
    image: Attrs,
    dn: str,
    *,
    version: int = 1,
    ts_ms: int = 5_000,
    anchor: str = "uuid-1",
) -> MVContribution:
    return MVContribution(
        mv_id=mv_id,
        mv_type="person",
        connector="ldap",
        anchor=anchor,
        dn=dn,
        cs_version=version,
        event_id=f"ldap:{anchor}:{version}",
        flows={},
        image=image,
        route="person|employeeId=E1",
        ts_ms=ts_ms,
    )


def disconnect(
    mv_id: str, connector: str = "hr", anchor: str = "E1", *, version: int = 1, ts_ms: int = 9_000
) -> MVDisconnect:
    return MVDisconnect(
        mv_id=mv_id,
        connector=connector,
        anchor=anchor,
        reason="deleted",
        cs_version=version,
        event_id=f"{connector}:{anchor}:{version}:d",
        ts_ms=ts_ms,
    )


def applied(export: PendingExport, *, anchor: str = "uuid-1", ts_ms: int = 3_000) -> ExportResult:
    """The export worker's report that ``export`` was applied."""
    return ExportResult(
        mv_id=export.mv_id,
        connector=export.connector,
        export_id=export.export_id,
        seq=export.seq,
        status="applied",
        op=export.op,
        anchor=anchor,
        dn=export.new_dn or export.dn,
        ts_ms=ts_ms,
    )


def result_of(
    export: PendingExport, status: str, *, anchor: str, error_type: str, ts_ms: int
) -> ExportResult:
    """The export worker's report on ``export``: ``applied`` (with the target's anchor and DN) or
    ``failed`` (with ``error_type``)."""
    if status == "applied":
        return applied(export, anchor=anchor, ts_ms=ts_ms)
    return ExportResult(
        mv_id=export.mv_id,
        connector=export.connector,
        export_id=export.export_id,
        seq=export.seq,
        status="failed",
        op=export.op,
        error_type=error_type,
        ts_ms=ts_ms,
    )


def image_of(export: PendingExport) -> Attrs:
    """What the directory shows after ``export`` (an add) was applied."""
    return {name: list(change.values) for name, change in export.attributes.items() if change.values}


def of_type(outputs: list[Any], cls: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, cls)]
