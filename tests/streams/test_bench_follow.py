"""The follow phase's diagnosis of a sample that timed out (streams/bench/follow.py), on real slapds: it
says whether the change stopped before the source, in the pipeline, or after the target wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.ldap.slapd import Slapd
from streams.bench.follow import _where_stopped

pytestmark = pytest.mark.integration


def add_person(server: Slapd, title: str) -> None:
    conn = server.connect()
    try:
        attrs = {"objectClass": ["inetOrgPerson"], "uid": ["p1"], "cn": ["P"], "sn": ["S"], "title": [title]}
        conn.add(f"uid=p1,{server.people_dn}", attributes=attrs)
    finally:
        conn.unbind()


def test_a_timed_out_sample_says_where_the_change_stopped(tmp_path: Path) -> None:
    with Slapd(tmp_path / "source") as source, Slapd(tmp_path / "target") as target:
        add_person(source, "t5")
        # The target has no such person yet: the pipeline did not deliver the change.
        assert "the source holds it, the target holds None: the pipeline lost or held it" in _where_stopped(
            source, target, "p1", "t5", tmp_path
        )
        # The source never took the change.
        assert "the source does not hold it (source title 't5')" in _where_stopped(
            source, target, "p1", "t6", tmp_path
        )
        # The target wrote it: the watch missed the push.
        add_person(target, "t5")
        said = _where_stopped(source, target, "p1", "t5", tmp_path)
        assert "the target holds it: its content-sync push was not seen" in said
        assert str(tmp_path / "worker.log") in said
