"""Acceptance 5 of the export issue: a target LDAP down for 30 s.

Exports wait and retry (capped backoff with jitter), nothing is lost or dead-lettered, and the backlog
drains in order when the server returns: an object added and then changed while the target was down ends
with its latest values. The worker runs with a fresh data directory: its state comes from the changelogs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.bench import kafka
from streams.samples.generate_hr import generate, write_csv
from tests.integration import export_env
from tests.integration.export_env import KafkaEnv

broker = export_env.broker
kafka_env = export_env.kafka_env

pytestmark = pytest.mark.integration

OUTAGE_S = 30


def idsync(env: KafkaEnv, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "streams.cli", args[0], *args[1:], "-c", str(env.config)]
    return [*cmd, "--bootstrap-servers", env.bootstrap]


def import_hr(env: KafkaEnv) -> None:
    run = subprocess.run(
        [*idsync(env, "import", "hr", "--full"), "--data-dir", str(env.work / "import")],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


async def records_on(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(end for end, _ts in (await kafka.true_ends(consumer, tps)).values())
    finally:
        await consumer.stop()


def test_target_down_for_30s_exports_wait_and_drain_in_order(kafka_env: KafkaEnv) -> None:
    env = kafka_env
    rows = [r for r in generate(40, seed=31) if r["status"] != "terminated"][:30]
    write_csv(rows[:20], env.hr)
    first = env.sync()
    assert first.code == 0, first.stderr
    assert len(env.ldap_entries()) == 20

    log = env.work / "worker.log"
    worker = subprocess.Popen(
        [*idsync(env, "worker"), "--data-dir", str(env.work / "worker")],
        env=env.env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        env.slapd.stop()
        down_at = time.monotonic()
        # While the target is down: ten new hires, then a change to one of them and to an existing person.
        write_csv(rows, env.hr)
        import_hr(env)
        rows[25]["title"] = "Outage Survivor"
        rows[3]["title"] = "Changed While Down"
        write_csv(rows, env.hr)
        import_hr(env)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert worker.poll() is None, log.read_text()[-3000:]
        env.slapd.start()

        deadline = time.monotonic() + 180
        entries: dict[str, dict[str, list[str]]] = {}
        while time.monotonic() < deadline:
            entries = env.ldap_entries()
            if len(entries) == 30 and entries[rows[25]["employee_id"]].get("title") == ["Outage Survivor"]:
                break
            time.sleep(1)
        assert set(entries) == {r["employee_id"] for r in rows}
        # In order: the add applied before the later change, so the change is what the entry shows.
        assert entries[rows[25]["employee_id"]]["title"] == ["Outage Survivor"]
        existing = rows[3]["employee_id"]
        while time.monotonic() < deadline and entries[existing].get("title") != ["Changed While Down"]:
            time.sleep(1)  # the update to an existing entry may land after the adds (another partition)
            entries = env.ldap_entries()
        assert entries[existing]["title"] == ["Changed While Down"]
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    text = log.read_text()
    assert "retrying in" in text  # the exports waited for the server rather than failing
    # Nothing was dead-lettered or reported as a per-object error.
    errors = asyncio.run(records_on(env.bootstrap, "idsync.demo.errors", 4))
    assert errors == 0, text[-3000:]
