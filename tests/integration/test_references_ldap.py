"""Group membership between two real directory trees (slapd), through ``idsync sync`` as a real process:
members are references (DN -> mv_id -> target DN), and one member change is exported as one value.

Issue 4's size: a 20,000-member group (``IDSYNC_TEST_GROUP_MEMBERS`` sets another). The group's load is
linear (a batch's member answers share one copy of the group: engine.metaverse.metaverse_steps); the
whole test, 20,001 users and the group through two directories twice, took 204 s on the 2-core machine
(346 s with 5,000 members before). The second sync adds one member with exactly one LDAP modify of one
value, never a rewrite of the group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ldap3 import BASE, MODIFY_ADD

from connectors.ldap.slapd import Slapd

pytestmark = pytest.mark.integration

#: Group size (issue 4's by default).
MEMBERS = int(os.environ.get("IDSYNC_TEST_GROUP_MEMBERS", "20000"))
SUFFIX = "dc=example,dc=org"
SRC = f"ou=src,{SUFFIX}"
DST = f"ou=dst,{SUFFIX}"


def config(work: Path, slapd: Slapd) -> Path:
    ldap = f'kind: ldap, uri: "{slapd.uri}", bind_dn: "{slapd.bind_dn}", password: "{slapd.password}"'
    ldap += ", delta: none"
    cfg = work / "groups.yaml"
    cfg.write_text(
        f"""
name: groups
connectors:
  src: {{{ldap}, base_dn: "{SRC}", object_classes: {{user: inetOrgPerson, group: groupOfNames}}}}
  dst: {{{ldap}, base_dn: "{DST}", object_classes: {{person: inetOrgPerson, group: groupOfNames}}}}
metaverse:
  person: {{}}
  group:
    attributes:
      member: {{reference: true, multi_valued: true}}
inbound:
  - connector: src
    object_type: user
    mv_type: person
    join: [{{cs: uid, mv: uid}}]
    project: true
    flows: [{{mv: uid, source: uid}}, {{mv: sn, source: sn}}]
  - connector: src
    object_type: group
    mv_type: group
    join: [{{cs: cn, mv: name}}]
    project: true
    flows: [{{mv: name, source: cn}}, {{mv: member, source: member}}]
  - {{connector: dst, object_type: person, mv_type: person, join: [{{cs: uid, mv: uid}}]}}
  - {{connector: dst, object_type: group, mv_type: group, join: [{{cs: cn, mv: name}}]}}
outbound:
  - connector: dst
    mv_type: person
    object_type: person
    dn: "uid={{uid}},ou=people,{DST}"
    flows:
      - {{target: objectClass, constant: [top, person, organizationalPerson, inetOrgPerson]}}
      - {{target: uid, source: uid}}
      - {{target: cn, source: uid}}
      - {{target: sn, source: sn}}
  - connector: dst
    mv_type: group
    object_type: group
    dn: "cn={{name}},ou=groups,{DST}"
    flows:
      - {{target: objectClass, constant: [top, groupOfNames]}}
      - {{target: cn, source: name}}
      - {{target: member, source: member}}
    requires: [member]
pipeline: {{partitions: 4}}
"""
    )
    return cfg


def sync(work: Path, cfg: Path, n: int) -> dict:
    out = work / f"summary-{n}.json"
    cmd = [sys.executable, "-m", "streams.cli", "sync", "-c", str(cfg), "--data-dir", str(work / "data")]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def members(slapd: Slapd, dn: str) -> list[str]:
    conn = slapd.connect()
    try:
        conn.search(dn, "(objectClass=*)", BASE, attributes=["member"])
        return sorted(str(v).lower() for v in conn.entries[0]["member"].values)
    finally:
        conn.unbind()


def group_modifies(slapd: Slapd, dn: str) -> dict[str, list[str]]:
    """The modify operations slapd's accesslog recorded on ``dn``: log entry -> its ``reqMod`` values."""
    conn = slapd.connect()
    try:
        found = conn.extend.standard.paged_search(
            "cn=accesslog",
            f"(&(objectClass=auditModify)(reqDN={dn}))",
            attributes=["reqMod"],
            paged_size=1000,
            generator=True,
        )
        return {
            str(e["dn"]): [
                v.decode() if isinstance(v, bytes) else str(v) for v in e["raw_attributes"]["reqMod"]
            ]
            for e in found
            if e.get("type") == "searchResEntry"
        }
    finally:
        conn.unbind()


def test_one_member_added_to_a_group_is_one_ldap_modify_of_one_value(tmp_path: Path) -> None:
    with Slapd(tmp_path / "slapd", sessionlog_source="accesslog") as slapd:
        for base in (SRC, DST):
            slapd.add_container(base)
            slapd.add_ou("people", base)
            slapd.add_ou("groups", base)
        conn = slapd.connect()
        try:
            for i in range(MEMBERS + 1):
                conn.add(
                    f"uid=u{i},ou=people,{SRC}",
                    ["top", "person", "organizationalPerson", "inetOrgPerson"],
                    {"uid": f"u{i}", "cn": f"u{i}", "sn": f"S{i}"},
                )
            people = [f"uid=u{i},ou=people,{SRC}" for i in range(MEMBERS)]
            conn.add(f"cn=staff,ou=groups,{SRC}", ["top", "groupOfNames"], {"cn": "staff", "member": people})
        finally:
            conn.unbind()
        cfg = config(tmp_path, slapd)
        group = f"cn=staff,ou=groups,{DST}"

        first = sync(tmp_path, cfg, 1)
        assert first["metaverse"]["mv_objects"] == MEMBERS + 2, first
        # The group waited for its first member to exist in the target (requires: [member]) instead of
        # failing an add without one (1 + 98 errors before the thirty-third session).
        assert first["dst"]["export_errors"] == 0, first
        want = sorted(f"uid=u{i},ou=people,{DST}".lower() for i in range(MEMBERS))
        assert members(slapd, group) == want

        # One more member in the source group; a fresh sync (new state, existing target objects join).
        conn = slapd.connect()
        try:
            conn.modify(
                f"cn=staff,ou=groups,{SRC}", {"member": [(MODIFY_ADD, [f"uid=u{MEMBERS},ou=people,{SRC}"])]}
            )
        finally:
            conn.unbind()
        before = group_modifies(slapd, group)
        second = sync(tmp_path, cfg, 2)
        assert members(slapd, group) == sorted([*want, f"uid=u{MEMBERS},ou=people,{DST}".lower()])
        # Exactly one export (u{MEMBERS} already exists in the target: it was provisioned by the first run).
        assert second["dst"]["exports_applied"] == 1, second
        assert second["dst"]["export_errors"] == 0, second
        # ... and slapd saw exactly one modify of the group, adding exactly one member value.
        new = {k: v for k, v in group_modifies(slapd, group).items() if k not in before}
        assert len(new) == 1, new
        [mods] = new.values()
        assert [m for m in mods if m.lower().startswith("member:")] == [
            f"member:+ uid=u{MEMBERS},ou=people,{DST}"
        ]
