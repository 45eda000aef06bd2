"""Runs ``idsync sync`` as a real process (embedded broker) against a real slapd, and reads the result."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3 import SUBTREE

from connectors.ldap.slapd import Slapd
from streams import samples

DEMO_CONFIG = Path(samples.__file__).parent / "demo.yaml"


@dataclass
class SyncRun:
    code: int
    stdout: str
    stderr: str
    summary: dict[str, Any]


class Env:
    """One slapd (with the demo's tree) and helpers to run syncs against it."""

    def __init__(self, slapd: Slapd, work: Path) -> None:
        self.slapd = slapd
        self.work = work
        self.hr = work / "hr.csv"
        self.config = DEMO_CONFIG
        self.runs = 0

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "IDSYNC_DEMO_HR": str(self.hr),
            "IDSYNC_LDAP_URI": self.slapd.uri,
            "IDSYNC_LDAP_BIND_DN": self.slapd.bind_dn,
            "IDSYNC_LDAP_PASSWORD": self.slapd.password,
            "IDSYNC_LDAP_BASE_DN": self.slapd.suffix,
        }

    def command(self, *extra: str) -> tuple[list[str], Path]:
        self.runs += 1
        out = self.work / f"summary-{self.runs}.json"
        cmd = [
            sys.executable,
            "-m",
            "streams.cli",
            "sync",
            "-c",
            str(self.config),
            "--data-dir",
            str(self.work / "data"),
            "--json",
            str(out),
            *extra,
        ]
        return cmd, out

    def sync(self, *extra: str, timeout: float = 300) -> SyncRun:
        cmd, out = self.command(*extra)
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        summary = json.loads(out.read_text()) if out.exists() else {}
        return SyncRun(proc.returncode, proc.stdout, proc.stderr, summary)

    def entries(self, base: str | None = None) -> dict[str, dict[str, list[str]]]:
        """Every entry under base (default: the suffix) as DN -> attributes (with entryUUID)."""
        conn = self.slapd.connect()
        try:
            conn.search(
                base or self.slapd.suffix,
                "(objectClass=inetOrgPerson)",
                SUBTREE,
                attributes=["*", "entryUUID"],
            )
            return {
                e["dn"]: {
                    k: sorted(bytes(v).decode() for v in vals) for k, vals in e["raw_attributes"].items()
                }
                for e in conn.response
                if e.get("type") == "searchResEntry"
            }
        finally:
            conn.unbind()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
