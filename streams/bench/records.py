"""The benchmark's configuration and change records for a synthetic organisation."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from schemas.records import ChangeRecord, RunMarker, Source
from streams.bench.org import Org, Person

#: One connector's import message: (connector, key, encoded value, partition or None for the key's).
Message = tuple[str, bytes, bytes, int | None]


def bench_config(name: str, work: Path, partitions: int, hr_file: Path) -> Path:
    """The bench's configuration file: hr projects, dir and appdb join, provisioning into dir."""
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
                "object_classes": {"person": "inetOrgPerson"},
            },
            "appdb": {"kind": "csv", "path": str(hr_file), "object_type": "account", "anchor": "account_id"},
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
                ],
                "deprovision": {"action": "delete"},
            }
        ],
        "pipeline": {"partitions": partitions},
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
    ) -> Message:
        """One delta change record (op c/u/d) with a fresh version."""
        self.version += 1
        rec = ChangeRecord(
            op=op,
            anchor=anchor,
            object_type=object_type,
            after=after,  # type: ignore[arg-type]
            source=Source(
                connector=connector, version=self.version, event_id=event_id, ts_ms=ts_ms, locator=anchor
            ),
        )
        return self.topic_of[connector], anchor.encode(), rec.model_dump_json().encode(), None


def initial_load(org: Org, f: RecordFactory, ts_ms: int) -> Iterator[Message]:
    """Target first (existing accounts join rather than provision), then the sources."""
    dir_objects = ((a, "person", dn, attrs) for a, dn, attrs in (org.dir_entry(i) for i in org.dir_accounts))
    yield from f.run("dir", dir_objects, f"dir-initial-{org.seed}", ts_ms)
    hr_objects = (
        (eid, "employee", None, row) for eid, row in ((p.employee_id, p.hr_row()) for p in org.people)
    )
    yield from f.run("hr", hr_objects, f"hr-initial-{org.seed}", ts_ms)
    app_objects = ((a, "account", None, row) for a, row in (org.app_row(i) for i in org.app_accounts))
    yield from f.run("appdb", app_objects, f"appdb-initial-{org.seed}", ts_ms)


def delta_records(
    changes: list[tuple[str, Person | None, Person | None]], f: RecordFactory, round_no: int, ts_ms: int
) -> Iterator[Message]:
    for n, (op, before, after) in enumerate(changes):
        p = after or before
        assert p is not None
        yield f.change(
            "hr",
            op,
            p.employee_id,
            "employee",
            after.hr_row() if after else None,
            f"delta-{round_no}-{n}",
            ts_ms,
        )


def initial_count(org: Org) -> int:
    return len(org.people) + len(org.dir_accounts) + len(org.app_accounts)
