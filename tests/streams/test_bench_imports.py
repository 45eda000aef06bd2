"""The bench's connector-import phase on the real systems: the HR file, PostgreSQL and slapd, read by
idsync's own connectors onto the embedded broker. Checks what was read and what is left behind, never
how fast it went."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from streams.bench.imports import DEFAULT_POSTGRES_URL, ImportsUnavailable, import_phase, imports_table
from streams.bench.org import generate
from streams.bench.records import write_hr_file

pytestmark = pytest.mark.integration


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"partitions": 2, "compression": "none", "postgres_url": None, **kw})


def _bench_schemas() -> set[str]:
    engine = create_engine(DEFAULT_POSTGRES_URL)
    try:
        with engine.connect() as conn:
            sql = "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'idsync_bench%'"
            rows = conn.execute(text(sql))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def test_each_connector_reads_the_whole_organisation_from_its_system(tmp_path: Path) -> None:
    org = generate(300, seed=3)
    hr = write_hr_file(org, tmp_path / "hr.csv")
    before = _bench_schemas()

    results = asyncio.run(import_phase(_args(), tmp_path, org, hr))

    by_name = {r.connector: r for r in results}
    assert set(by_name) == {"hr", "appdb", "dir"}
    # Every person from the file, every account from PostgreSQL, every directory entry from slapd (the
    # phase itself fails unless each topic holds one record per object plus the run markers).
    assert by_name["hr"].objects == len(org.people) == 300
    assert by_name["appdb"].objects == len(org.app_accounts) > 0
    assert by_name["dir"].objects == len(org.dir_accounts) > 0
    assert by_name["appdb"].system.startswith("PostgreSQL")
    for r in results:
        assert r.seconds > 0 and r.rate > 0 and r.cpu_us_per_object > 0
    # The accounts' schema is dropped again.
    assert _bench_schemas() == before
    table = imports_table(results)
    assert "PostgreSQL (sql)" in table and "slapd (ldap)" in table


def test_an_unreachable_postgresql_fails_before_anything_runs(tmp_path: Path) -> None:
    org = generate(20, seed=3)
    hr = write_hr_file(org, tmp_path / "hr.csv")
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1

    with pytest.raises(ImportsUnavailable, match=r"127\.0\.0\.1:1.*--no-imports"):
        asyncio.run(import_phase(_args(postgres_url=url), tmp_path, org, hr))
    assert not (tmp_path / "imports20" / "slapd").exists()  # no slapd was started for it


def test_the_postgresql_url_must_name_the_driver_the_load_uses(tmp_path: Path) -> None:
    org = generate(20, seed=3)
    hr = write_hr_file(org, tmp_path / "hr.csv")
    with pytest.raises(ImportsUnavailable, match="postgresql\\+psycopg"):
        asyncio.run(import_phase(_args(postgres_url="sqlite:///x.db"), tmp_path, org, hr))
