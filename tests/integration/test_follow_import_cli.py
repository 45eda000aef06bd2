"""``idsync import <connector> --full|--delta|--follow`` as a real process on an embedded broker and slapd."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.ldap.slapd import Slapd, free_port
from streams.broker import EmbeddedBroker
from tests.integration.test_follow_ldap import (
    Pipeline,
    add_person,
    delete_person,
    read_topic,
    set_title,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Pipeline, str]]:
    with (
        EmbeddedBroker(tmp_path / "broker") as broker,
        Slapd(tmp_path / "slapd", port=free_port()) as slapd,
    ):
        config = tmp_path / "idsync.yaml"
        # The target table is never written here (no worker): any name will do for validation.
        instance = write_config(config, slapd, "follow_cli_unused", "delta")
        yield Pipeline(tmp_path, broker, slapd, config), instance


def run_import(p: Pipeline, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*p.base("import", "dir"), *flags], env=p.env(), capture_output=True, text=True, timeout=120
    )


def test_import_command_full_delta_and_follow(env: tuple[Pipeline, str], tmp_path: Path) -> None:
    p, instance = env
    topic = f"idsync.{instance}.import.dir"
    add_person(p.slapd, "ann", tmp_path)
    add_person(p.slapd, "ben", tmp_path)

    # The config says import_mode: delta; with no watermark stored, the delta is a full refresh.
    first = run_import(p)
    assert first.returncode == 0, first.stderr
    assert "dir: delta import: 2 changed, 0 deleted, 0 failures" in first.stdout
    assert "1 full refreshes" in first.stdout

    set_title(p.slapd, "ann", "chief", tmp_path)
    delete_person(p.slapd, "ben", tmp_path)
    second = run_import(p, "--delta")
    assert second.returncode == 0, second.stderr
    assert "1 changed, 1 deleted" in second.stdout and "0 full refreshes" in second.stdout

    # Follow until SIGTERM: a change made meanwhile is published as it happens.
    with (tmp_path / "follow.log").open("w+") as log:
        proc = subprocess.Popen(
            [*p.base("import", "dir"), "--follow"],
            env=p.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while "following dir" not in (tmp_path / "follow.log").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "follow.log"
                ).read_text()
                time.sleep(0.1)
            add_person(p.slapd, "cid", tmp_path)
            while not any(
                r.get("op") == "u" and r["after"].get("uid") == ["cid"]
                for r in read_topic(p.broker.bootstrap, topic)
            ):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "follow.log"
                ).read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        output = (tmp_path / "follow.log").read_text()
    assert code == 0, output
    assert "dir: follow import: 1 changed" in output and "0 full refreshes" in output

    records = read_topic(p.broker.bootstrap, topic)
    assert [r["op"] for r in records if r.get("op") in ("r", "u", "d")].count("r") == 2
    assert {
        (r["op"], (r.get("after") or {}).get("uid", [None])[0]) for r in records if r.get("op") in ("u", "d")
    } == {
        ("u", "ann"),
        ("d", None),
        ("u", "cid"),
    }

    # A full import on request; an unknown connector is a clear configuration error.
    full = run_import(p, "--full")
    assert full.returncode == 0 and "dir: full import: 2 changed" in full.stdout, full.stderr
    bad = subprocess.run([*p.base("import", "nope")], env=p.env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "no connector 'nope'" in bad.stderr and "Traceback" not in bad.stderr
