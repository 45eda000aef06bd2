"""The benchmark's configuration and change records for a synthetic organisation.

HR is the source of people and of groups (one per department, and all-staff with up to 50,000
members): HR objects have DNs (``employeeNumber=E...,ou=people,o=hr``), a person's manager and a group's
members are references to them, translated to the directory's DNs on export.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from schemas.records import ChangeRecord, RunMarker, Source
from streams.bench.org import Org, Person

#: One connector's import message: (connector, key, encoded value, partition or None for the key's).
Message = tuple[str, bytes, bytes, int | None]


def bench_config(
    name: str,
    work: Path,
    partitions: int,
    hr_file: Path,
    checkpoint_ms: int = 1000,
    compression: str | None = "zstd",
    pipeline: dict[str, Any] | None = None,
) -> Path:
    """The bench's configuration file: hr projects, dir and appdb join, provisioning into dir.
    ``compression``: ``pipeline.compression`` (None: not set, the default applies); ``pipeline``: further
    ``pipeline`` settings (``idsync bench --pipeline KEY=VALUE``)."""
    config: dict[str, Any] = {
        "name": name,
        "connectors": {
            "hr": {"kind": "csv", "path": str(hr_file), "object_type": "employee", "anchor": "employee_id"},
            "dir": {
                "kind": "ldap",
                "uri": "${IDSYNC_BENCH_LDAP_URI:-ldap://127.0.0.1:1}",
                "bind_dn": "${IDSYNC_BENCH_LDAP_BIND_DN:-cn=admin,dc=example,dc=org}",
                "password": "${IDSYNC_BENCH_LDAP_PASSWORD:-unused}",
                "base_dn": "dc=example,dc=org",
                "object_classes": {"person": "inetOrgPerson", "group": "groupOfNames"},
            },
            "appdb": {"kind": "csv", "path": str(hr_file), "object_type": "account", "anchor": "account_id"},
        },
        "metaverse": {
            "person": {
                "deletion": {"rule": "source-disconnects", "sources": ["hr"]},
                "attributes": {"manager": {"reference": True}},
            },
            "group": {
                "deletion": {"rule": "source-disconnects", "sources": ["hr"]},
                "attributes": {"member": {"reference": True, "multi_valued": True}},
            },
        },
        "inbound": [
            {
                "connector": "hr",
                "object_type": "employee",
                "mv_type": "person",
                "join": [{"cs": "employee_id", "mv": "employeeId"}],
                "project": True,
                "precedence": 10,
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
                    {"mv": "manager", "source": "manager"},
                ],
            },
            {
                "connector": "hr",
                "object_type": "group",
                "mv_type": "group",
                "join": [{"cs": "cn", "mv": "name"}],
                "project": True,
                "flows": [{"mv": "name", "source": "cn"}, {"mv": "member", "source": "member"}],
            },
            {
                "connector": "dir",
                "object_type": "person",
                "mv_type": "person",
                "join": [{"cs": "employeeNumber", "mv": "employeeId"}],
            },
            {
                "connector": "appdb",
                "object_type": "account",
                "mv_type": "person",
                "join": [{"cs": "email", "mv": "mail", "normalize": ["trim", "lower"]}],
                "precedence": 20,
                "flows": [{"mv": "appRole", "source": "role"}],
            },
        ],
        "outbound": [
            {
                "connector": "dir",
                "mv_type": "person",
                "object_type": "person",
                "scope": [[{"attribute": "status", "operator": "equal", "value": "active"}]],
                "dn": "cn={givenName} {sn} ({uid}),ou=people,dc=example,dc=org",
                "flows": [
                    {
                        "target": "objectClass",
                        "constant": ["top", "person", "organizationalPerson", "inetOrgPerson"],
                    },
                    {"target": "cn", "template": "{givenName} {sn} ({uid})"},
                    {"target": "sn", "source": "sn"},
                    {"target": "givenName", "source": "givenName"},
                    {"target": "displayName", "source": "displayName"},
                    {"target": "mail", "source": "mail"},
                    {"target": "uid", "source": "uid"},
                    {"target": "employeeNumber", "source": "employeeId"},
                    {"target": "departmentNumber", "source": "department", "allow_null": True},
                    {"target": "title", "source": "title", "allow_null": True},
                    {"target": "l", "source": "location", "allow_null": True},
                    {"target": "manager", "source": "manager", "allow_null": True},
                ],
                "deprovision": {"action": "delete"},
            },
            {
                "connector": "dir",
                "mv_type": "group",
                "object_type": "group",
                "dn": "cn={name},ou=groups,dc=example,dc=org",
                "flows": [
                    {"target": "objectClass", "constant": ["top", "groupOfNames"]},
                    {"target": "cn", "source": "name"},
                    {"target": "member", "source": "member"},
                ],
                # A groupOfNames must have a member: added once one exists in the directory.
                "requires": ["member"],
                "deprovision": {"action": "delete"},
            },
        ],
        "pipeline": {
            "partitions": partitions,
            "checkpoint_interval_ms": checkpoint_ms,
            **({"compression": compression} if compression is not None else {}),
            **(pipeline or {}),
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_hr_file(org: Org, path: Path) -> Path:
    """The HR file of the organisation (what the csv connector would read)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        cols = ["employee_id", "first_name", "last_name", "email", "uid", "department", "title", "location"]
        w.writerow([*cols, "status", "manager_id"])
        for p in org.people:
            w.writerow([getattr(p, c) if hasattr(p, c) else "" for c in cols] + [p.status, p.manager or ""])
    return path


class RecordFactory:
    """Encodes change records the way the importer and follow connectors publish them."""

    def __init__(self, topic_of: dict[str, str], partitions: int) -> None:
        self.topic_of = topic_of
        self.partitions = partitions
        self.version = 1_000_000

    def run(
        self,
        connector: str,
        objects: Iterator[tuple[str, str, str | None, dict[str, list[str]]]],
        run_id: str,
        ts_ms: int,
    ) -> Iterator[Message]:
        """A bracketed full-import run: run-start on every partition, the objects, run-end everywhere."""
        topic = self.topic_of[connector]
        self.version += 1
        version = self.version

        def marker(op: str, p: int) -> bytes:
            return (
                RunMarker(
                    op=op,
                    run_id=run_id,
                    connector=connector,
                    partition=p,  # type: ignore[arg-type]
                    run_version=version,
                    ts_ms=ts_ms,
                )
                .model_dump_json()
                .encode()
            )

        for p in range(self.partitions):
            yield topic, b"__run__", marker("run-start", p), p
        for anchor, object_type, dn, attrs in objects:
            rec = ChangeRecord(
                op="r",
                anchor=anchor,
                object_type=object_type,
                after=attrs,
                source=Source(
                    connector=connector,
                    dn=dn,
                    version=version,
                    event_id=f"{run_id}:{anchor}",
                    run_id=run_id,
                    ts_ms=ts_ms,
                    locator=dn or anchor,
                ),
            )
            yield topic, anchor.encode(), rec.model_dump_json().encode(), None
        for p in range(self.partitions):
            yield topic, b"__run__", marker("run-end", p), p

    def change(
        self,
        connector: str,
        op: str,
        anchor: str,
        object_type: str,
        after: dict[str, list[str]] | None,
        event_id: str,
        ts_ms: int,
        dn: str | None = None,
        added: dict[str, list[str]] | None = None,
        removed: dict[str, list[str]] | None = None,
    ) -> Message:
        """One delta change record (op c/u/d) with a fresh version. With ``added``/``removed``: a
        value-level update (change record version 2) whose ``after`` holds only the attributes given whole."""
        self.version += 1
        by_value = added is not None or removed is not None
        rec = ChangeRecord(
            version=2 if by_value else 1,
            op=op,
            anchor=anchor,
            object_type=object_type,
            after=after,  # type: ignore[arg-type]
            changes=sorted(after or {}) if by_value else None,
            added=added or None,
            removed=removed or None,
            source=Source(
                connector=connector,
                dn=dn,
                version=self.version,
                event_id=event_id,
                ts_ms=ts_ms,
                locator=anchor,
            ),
        )
        return self.topic_of[connector], anchor.encode(), rec.model_dump_json().encode(), None


def hr_dn(employee_id: str) -> str:
    return f"employeeNumber={employee_id},ou=people,o=hr"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,o=hr"


def hr_image(p: Person) -> dict[str, list[str]]:
    """A person as HR publishes it: the row, and the manager as a reference (a DN of HR)."""
    row = p.hr_row()
    if p.manager:
        row["manager"] = [hr_dn(p.manager)]
    return row


def group_image(org: Org, name: str, members: list[int]) -> dict[str, list[str]]:
    return {"cn": [name], "member": [hr_dn(org.people[i].employee_id) for i in members]}


def title_change(f: RecordFactory, p: Person, title: str, ts_ms: int) -> Message:
    """A change of one person's title alone, as HR publishes it: the whole image (its manager reference
    included) and its DN, the title changed; the title is also the change's event id. The latency run's
    change."""
    return f.change(
        "hr",
        "u",
        p.employee_id,
        "employee",
        {**hr_image(p), "title": [title]},
        title,
        ts_ms,
        dn=hr_dn(p.employee_id),
    )


def initial_load(
    org: Org, f: RecordFactory, ts_ms: int, dir_anchors: Mapping[str, str] | None = None
) -> Iterator[Message]:
    """Target first (existing accounts join rather than provision), then the sources. ``dir_anchors``: the
    directory accounts' anchors by DN (lower case) where they are entries of a real directory (the entryUUIDs
    slapd gave them), instead of the organisation's made-up ones."""
    dir_objects = (
        (dir_anchors[dn.lower()] if dir_anchors is not None else a, "person", dn, attrs)
        for a, dn, attrs in (org.dir_entry(i) for i in org.dir_accounts)
    )
    yield from f.run("dir", dir_objects, f"dir-initial-{org.seed}", ts_ms)

    def hr_objects() -> Iterator[tuple[str, str, str | None, dict[str, list[str]]]]:
        for p in org.people:
            yield p.employee_id, "employee", hr_dn(p.employee_id), hr_image(p)
        for name, members in sorted(org.groups.items()):
            yield f"group-{name}", "group", group_dn(name), group_image(org, name, members)

    yield from f.run("hr", hr_objects(), f"hr-initial-{org.seed}", ts_ms)
    app_objects = ((a, "account", None, row) for a, row in (org.app_row(i) for i in org.app_accounts))
    yield from f.run("appdb", app_objects, f"appdb-initial-{org.seed}", ts_ms)


def delta_records(
    changes: list[tuple[str, Person | None, Person | None]],
    f: RecordFactory,
    round_no: int,
    ts_ms: int,
    org: Org | None = None,
) -> Iterator[Message]:
    """One delta round's HR change records; with ``org`` (after the round), also the groups whose
    membership the round changed (a department change moves a person between two department groups)."""
    for n, (op, before, after) in enumerate(changes):
        p = after or before
        assert p is not None
        yield f.change(
            "hr",
            op,
            p.employee_id,
            "employee",
            hr_image(after) if after else None,
            f"delta-{round_no}-{n}",
            ts_ms,
            dn=hr_dn(p.employee_id),
        )
    if org is None:
        return
    for name, members in sorted(org.regroup().items()):
        yield f.change(
            "hr",
            "u",
            f"group-{name}",
            "group",
            group_image(org, name, members),
            f"delta-{round_no}-group-{name}",
            ts_ms,
            dn=group_dn(name),
        )


def initial_count(org: Org) -> int:
    return len(org.people) + len(org.groups) + len(org.dir_accounts) + len(org.app_accounts)
