"""Export tests: ``idsync`` processes against one broker that outlives them (so state and offsets carry
over from run to run, as on real Kafka) and a real slapd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.ldap.slapd import Slapd, free_port
from streams.broker import EmbeddedBroker
from tests.integration.harness import DEMO_CONFIG, Env, SyncRun

PEOPLE = "ou=people,dc=example,dc=org"


def delete_config(path: Path, threshold: str = "{count: 500}", partitions: int = 4) -> Path:
    """The demo's configuration with deprovisioning by delete and a deletion threshold on ``ldap``."""
    text = DEMO_CONFIG.read_text()
    text = text.replace(
        "    object_classes: {person: inetOrgPerson}\n",
        f"    object_classes: {{person: inetOrgPerson}}\n    deletion_threshold: {threshold}\n",
    )
    text = text[: text.index("    deprovision:")] + "    deprovision: {action: delete}\n"
    text += f"\npipeline: {{partitions: {partitions}}}\n"
    path.write_text(text)
    return path


class KafkaEnv(Env):
    """``Env`` whose commands use a broker that outlives them."""

    def __init__(self, slapd: Slapd, work: Path, bootstrap: str, config: Path) -> None:
        super().__init__(slapd, work)
        self.bootstrap = bootstrap
        self.config = config
        self.extra_env: dict[str, str] = {}
        # `idsync sync --bootstrap-servers` does not create its data directory itself.
        (work / "data").mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}

    def sync(self, *extra: str, timeout: float = 300) -> SyncRun:
        return super().sync("--bootstrap-servers", self.bootstrap, *extra, timeout=timeout)

    def sync_process(self, *extra: str, stderr: Path) -> subprocess.Popen[bytes]:
        cmd, _ = self.command("--bootstrap-servers", self.bootstrap, *extra)
        return subprocess.Popen(
            cmd, env=self.env(), stdout=subprocess.DEVNULL, stderr=stderr.open("wb"), start_new_session=True
        )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "streams.cli", args[0], "-c", str(self.config)]
        cmd += ["--bootstrap-servers", self.bootstrap, "--data-dir", str(self.work / "cli"), *args[1:]]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def pending(self, connector: str = "ldap") -> list[dict]:
        run = self.cli("pending-exports", connector, "--json")
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def ldap_entries(self) -> dict[str, dict[str, list[str]]]:
        """People entries keyed by employeeNumber, with their DN (``_dn``) and timestamps."""
        conn = self.slapd.connect()
        try:
            conn.search(
                PEOPLE,
                "(objectClass=inetOrgPerson)",
                attributes=["*", "entryUUID", "createTimestamp", "modifyTimestamp"],
            )
            out: dict[str, dict[str, list[str]]] = {}
            for e in conn.response:
                if e.get("type") != "searchResEntry":
                    continue
                attrs = {
                    k: sorted(bytes(v).decode() for v in vals) for k, vals in e["raw_attributes"].items()
                }
                attrs["_dn"] = [e["dn"]]
                number = attrs["employeeNumber"][0]
                assert number not in out, f"two entries for employee {number}"
                out[number] = attrs
            return out
        finally:
            conn.unbind()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def kafka_env(tmp_path: Path, broker: EmbeddedBroker) -> Iterator[KafkaEnv]:
    # A fixed port: the outage test stops and restarts slapd on the same port and data.
    with Slapd(tmp_path / "slapd", port=free_port()) as slapd:
        yield KafkaEnv(slapd, tmp_path, broker.bootstrap, delete_config(tmp_path / "idsync.yaml"))


__all__ = ["PEOPLE", "KafkaEnv", "broker", "delete_config", "kafka_env", "os"]
