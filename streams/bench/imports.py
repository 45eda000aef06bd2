"""Bench phase ``imports``: the organisation put into the real systems and read back by idsync's connectors.

The pipeline phases (``streams.bench.run``) start at the import topics. This one measures the step before
them, MIM's import run: each connector's full import — the HR file (csv connector), the application
database (sql connector on PostgreSQL), the directory (ldap connector on a throwaway slapd) — read and
published as a bracketed run on ``import.<connector>`` of a fresh embedded broker, with no worker
consuming. Loading the systems is the bench's set-up, timed apart from the imports. Every import is
checked: the topic must hold one record per object plus the run markers, or the phase fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ldap3.core.exceptions import LDAPNoSuchObjectResult

from streams.bench import kafka
from streams.bench.org import Org
from streams.bench.records import bench_config
from streams.broker import EmbeddedBroker

#: PostgreSQL as the machine runs it (trust auth on loopback); ``idsync bench --postgres-url`` changes it.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class ImportResult:
    """One connector's full import of the organisation."""

    connector: str
    system: str
    size: int
    objects: int
    #: Seconds the bench took to put the objects into the system (set-up, not idsync's work); None for the
    #: HR file, which the bench writes for every phase.
    load_seconds: float | None
    seconds: float
    rate: float
    #: CPU of the importing process (connector, change records, producer) and of the broker, per object.
    cpu_us_per_object: float
    broker_cpu_us_per_object: float


class ImportsUnavailable(RuntimeError):
    """A system the phase needs is not there (PostgreSQL down, no slapd binary)."""


@contextmanager
def postgres_accounts(url: str, org: Org) -> Iterator[tuple[str, float]]:
    """The organisation's application accounts in a fresh schema of ``url`` (dropped afterwards):
    yields (schema, seconds the load took)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url, connect_args={"connect_timeout": 5})
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        engine.dispose()
        raise ImportsUnavailable(
            f"--postgres-url: a postgresql+psycopg:// URL is needed (got {url.split(':')[0]}:)"
        )
    schema = f"idsync_bench_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except SQLAlchemyError as exc:
        engine.dispose()
        cause = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ImportsUnavailable(
            f"PostgreSQL at {engine.url.render_as_string(hide_password=True)} is not reachable ({cause}); "
            "start it, point --postgres-url at one, or pass --no-imports"
        ) from exc
    try:
        started = time.monotonic()
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(
                f"CREATE TABLE {schema}.accounts (account_id TEXT PRIMARY KEY, login TEXT NOT NULL, "
                "email TEXT NOT NULL, role TEXT NOT NULL)"
            )
            cols = ("account_id", "login", "email", "role")
            with cur.copy(f"COPY {schema}.accounts ({', '.join(cols)}) FROM STDIN") as copy:
                for i in org.app_accounts:
                    _anchor, row = org.app_row(i)
                    copy.write_row([row[c][0] for c in cols])
            raw.commit()
        finally:
            raw.close()
        yield schema, time.monotonic() - started
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def load_directory(slapd: Any, org: Org) -> float:
    """The organisation's existing directory accounts as slapd entries; returns the seconds it took."""
    started = time.monotonic()
    conn = slapd.connect()
    try:
        for i in org.dir_accounts:
            _anchor, dn, attrs = org.dir_entry(i)
            conn.add(dn, attributes=attrs)
    finally:
        conn.unbind()
    return time.monotonic() - started


def directory_anchors(slapd: Any, org: Org) -> dict[str, str]:
    """The entryUUID slapd gave each of the organisation's directory accounts (``load_directory``), by DN in
    lower case: the anchors the LDAP connector would import them with."""
    conn = slapd.connect()
    try:
        found = conn.extend.standard.paged_search(
            slapd.people_dn, "(objectClass=inetOrgPerson)", attributes=["entryUUID"], paged_size=1000
        )
        anchors = {}
        for r in found:
            if r["type"] == "searchResEntry":
                value = r["attributes"]["entryUUID"]
                anchors[r["dn"].lower()] = str(value[0] if isinstance(value, list) else value)
    finally:
        conn.unbind()
    missing = [
        dn for _a, dn, _attrs in (org.dir_entry(i) for i in org.dir_accounts) if dn.lower() not in anchors
    ]
    if missing:
        raise RuntimeError(f"{len(missing)} directory accounts not in slapd, e.g. {missing[0]!r}")
    return anchors


#: Attributes whose values are DNs: compared in lower case (the directory keeps a DN as it was written,
#: the pipeline writes the DN its target computed).
DN_VALUED = frozenset({"member", "manager"})


def directory_differences(
    slapd: Any, expected: Mapping[str, Mapping[str, list[str]]], under: list[str]
) -> tuple[int, list[str]]:
    """Where slapd's entries under the containers ``under`` differ from ``expected`` (DN in lower case ->
    attributes, as ``streams.bench.run.target_state`` gives them): entries missing or not expected, and
    attributes of an expected entry whose values differ (only those ``expected`` names, DN values in lower
    case). Returns how many differences and the first few, described."""
    bases = [b.lower() for b in under]
    wanted = {dn: attrs for dn, attrs in expected.items() if any(dn.endswith("," + b) for b in bases)}
    found: dict[str, dict[str, list[str]]] = {}
    conn = slapd.connect()
    try:
        for base in under:
            try:
                entries = list(
                    conn.extend.standard.paged_search(
                        base, "(objectClass=*)", attributes=["*"], paged_size=1000
                    )
                )
            except LDAPNoSuchObjectResult:
                continue  # nothing was ever added there
            for r in entries:
                if r["type"] == "searchResEntry" and r["dn"].lower() != base.lower():
                    attrs = r["attributes"].items()
                    found[r["dn"].lower()] = {k: v if isinstance(v, list) else [v] for k, v in attrs}
    finally:
        conn.unbind()

    def norm(name: str, values: list[Any]) -> list[str]:
        return sorted(str(v).lower() if name.lower() in DN_VALUED else str(v) for v in values)

    differences: list[str] = []
    for dn in sorted(wanted.keys() - found.keys()):
        differences.append(f"missing: {dn}")
    for dn in sorted(found.keys() - wanted.keys()):
        differences.append(f"not expected: {dn}")
    for dn in sorted(wanted.keys() & found.keys()):
        held = {k.lower(): v for k, v in found[dn].items()}
        for name, values in sorted(wanted[dn].items()):
            got, want = norm(name, held.get(name.lower(), [])), norm(name, values)
            if got != want:
                if max(len(got), len(want)) <= 3:
                    differences.append(f"{dn}: {name} holds {got}, the exports say {want}")
                else:
                    differences.append(f"{dn}: {name} holds {len(got)} values, the exports say {len(want)}")
    return len(differences), differences[:5]


def import_config(
    work: Path, args: argparse.Namespace, hr_file: Path, schema: str, postgres_url: str
) -> Path:
    """The bench's configuration with ``appdb`` read from PostgreSQL instead of generated records."""
    path = bench_config("imports", work, args.partitions, hr_file, compression=args.compression)
    config = yaml.safe_load(path.read_text())
    config["connectors"]["appdb"] = {
        "kind": "sql",
        "url": postgres_url,
        "object_types": {"account": {"table": "accounts", "schema": schema, "anchor": "account_id"}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def import_phase(args: argparse.Namespace, work: Path, org: Org, hr_file: Path) -> list[ImportResult]:
    """Each connector's full import of ``org`` from its real system, one after the other."""
    from connectors.base import FullImport
    from connectors.ldap.slapd import SLAPD_PATH, Slapd
    from streams.app import ensure_topics
    from streams.config import load_config
    from streams.connectors import build_connector
    from streams.importer import full_import
    from streams.runtime import Runtime, Settings

    if not os.access(SLAPD_PATH, os.X_OK):
        raise ImportsUnavailable(f"no slapd at {SLAPD_PATH} (Debian package slapd); or pass --no-imports")
    here = work / f"imports{org.size}"
    here.mkdir(parents=True, exist_ok=True)
    url = getattr(args, "postgres_url", None) or DEFAULT_POSTGRES_URL
    results: list[ImportResult] = []
    with postgres_accounts(url, org) as (schema, db_load_s), Slapd(here / "slapd") as slapd:
        dir_load_s = await asyncio.to_thread(load_directory, slapd, org)
        # The directory's password reaches the config through the environment, as in a deployment.
        os.environ.update(
            IDSYNC_BENCH_LDAP_URI=slapd.uri,
            IDSYNC_BENCH_LDAP_BIND_DN=slapd.bind_dn,
            IDSYNC_BENCH_LDAP_PASSWORD=slapd.password,
        )
        config = load_config(import_config(here, args, hr_file, schema, url))
        systems = {
            "hr": ("HR file (csv)", None, len(org.people)),
            "appdb": ("PostgreSQL (sql)", db_load_s, len(org.app_accounts)),
            "dir": ("slapd (ldap)", dir_load_s, len(org.dir_accounts)),
        }
        with EmbeddedBroker(here) as broker:
            rt = Runtime(Settings(broker.bootstrap, here / "state"), config)
            try:
                await ensure_topics(rt)
                for name, (system, load_s, expected) in systems.items():
                    connector = build_connector(name, config.connectors[name])
                    assert isinstance(connector, FullImport), name
                    try:
                        cpu, broker_cpu = time.process_time(), broker.cpu_s()
                        started = time.monotonic()
                        report = await full_import(rt, name, connector)
                        seconds = time.monotonic() - started
                        cpu, broker_cpu = time.process_time() - cpu, broker.cpu_s() - broker_cpu
                    finally:
                        close = getattr(connector, "close", None)
                        if close is not None:
                            close()
                    topic = rt.names.import_topic(name)
                    on_topic = (await kafka.topic_sizes(broker.bootstrap, [topic]))[topic]
                    markers = 2 * rt.partitions
                    if report.objects != expected or report.failures or on_topic != expected + markers:
                        raise RuntimeError(
                            f"import of {name}: {report.objects} objects read ({report.failures} failed), "
                            f"{on_topic} records on {topic}; expected {expected} objects and {markers} "
                            "run markers"
                        )
                    n = max(1, report.objects)
                    results.append(
                        ImportResult(
                            connector=name,
                            system=system,
                            size=org.size,
                            objects=report.objects,
                            load_seconds=None if load_s is None else round(load_s, 2),
                            seconds=round(seconds, 3),
                            rate=round(report.objects / max(seconds, 1e-6)),
                            cpu_us_per_object=round(1e6 * cpu / n, 1),
                            broker_cpu_us_per_object=round(1e6 * broker_cpu / n, 1),
                        )
                    )
            finally:
                await rt.stop()
    return results


def imports_table(results: list[ImportResult]) -> str:
    from streams.sync import format_table

    head = ["connector", "system", "N", "objects", "load s", "import s", "objects/s", "CPU µs/obj i+b"]
    rows = [
        [
            r.connector,
            r.system,
            f"{r.size:,}",
            f"{r.objects:,}",
            "-" if r.load_seconds is None else f"{r.load_seconds:.2f}",
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            f"{r.cpu_us_per_object:.0f}+{r.broker_cpu_us_per_object:.0f}",
        ]
        for r in results
    ]
    return format_table(head, rows)
