"""LdapConnector against a real slapd (tests.fixtures.slapd): import, idempotent exports, error mapping."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ldap3.core.exceptions import LDAPObjectClassViolationResult
from ldap3.utils.dn import escape_rdn

from connectors import base
from connectors.base import ImportedObject, ImportFailure
from connectors.ldap import LdapConnector, map_ldap_error
from connectors.ldap import slapd as slapd_module
from connectors.ldap.slapd import Slapd, free_port
from schemas.config import LdapConnectorConfig
from schemas.errors import DataError, FatalError, RetriableError
from schemas.records import AttrChange, PendingExport
from tests.fixtures.slapd import LdapTree

pytestmark = pytest.mark.integration

_seq = itertools.count(1)


def person_attrs(cn: str, sn: str = "Doe", **extra: list[str]) -> dict[str, AttrChange]:
    attrs = {
        "objectClass": AttrChange(
            op="replace", values=["top", "person", "organizationalPerson", "inetOrgPerson"]
        ),
        "cn": AttrChange(op="replace", values=[cn]),
        "sn": AttrChange(op="replace", values=[sn]),
    }
    attrs.update({name: AttrChange(op="replace", values=values) for name, values in extra.items()})
    return attrs


def pending(op: str, dn: str, **kw: object) -> PendingExport:
    n = next(_seq)
    fields: dict[str, object] = {
        "export_id": f"e{n}",
        "seq": n,
        "connector": "ldap",
        "mv_id": "mv-1",
        "op": op,
        "object_type": "person",
        "dn": dn,
        "ts_ms": 0,
    }
    fields.update(kw)
    return PendingExport.model_validate(fields)


@pytest.fixture
def connector(ldap_tree: LdapTree) -> Iterator[LdapConnector]:
    conn = LdapConnector("ldap", ldap_tree.config())
    yield conn
    conn.close()


def dn_in(tree: LdapTree, cn: str, *ous: str) -> str:
    return ",".join([f"cn={escape_rdn(cn)}", *(f"ou={escape_rdn(ou)}" for ou in ous), tree.base_dn])


# ---------------------------------------------------------------------------------------- protocol
def test_implements_the_connector_protocols(connector: LdapConnector) -> None:
    for proto in (base.Connector, base.FullImport, base.Export, base.ConnectionCheck):
        assert isinstance(connector, proto)


# ---------------------------------------------------------------------------------------- test_connection
def test_test_connection_ok(connector: LdapConnector) -> None:
    connector.test_connection()


def test_wrong_password_is_fatal_credentials(ldap_tree: LdapTree) -> None:
    secret = "not-the-password-4711"
    with LdapConnector("ldap", ldap_tree.config(password=secret)) as conn, pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-credentials"
    assert secret not in str(err.value) and ldap_tree.slapd.password not in str(err.value)
    assert "Traceback" not in str(err.value)


def test_unreachable_server_is_retriable_no_start_connection(ldap_tree: LdapTree) -> None:
    config = ldap_tree.config(uri=f"ldap://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    with LdapConnector("ldap", config) as conn, pytest.raises(RetriableError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-connection"
    assert "127.0.0.1" in str(err.value)
    assert ldap_tree.slapd.password not in str(err.value)


def test_missing_base_dn_is_fatal(ldap_tree: LdapTree) -> None:
    config = ldap_tree.config(base_dn=f"ou=nowhere,{ldap_tree.base_dn}")
    with LdapConnector("ldap", config) as conn, pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-bad-base-dn"
    assert "ou=nowhere" in str(err.value)


# ---------------------------------------------------------------------------------------- full import
def test_full_import_pages_and_anchors_on_entry_uuid(ldap_tree: LdapTree) -> None:
    uuids = {}
    for cn in ("Ann", "Bob", "Cid"):
        uuids[cn] = ldap_tree.add(
            dn_in(ldap_tree, cn),
            {"objectClass": ["inetOrgPerson"], "cn": [cn], "sn": ["S"], "givenName": [cn.lower()]},
        )
    # Not an inetOrgPerson: out of scope.
    ldap_tree.slapd.add_ou("groups", ldap_tree.base_dn)

    with LdapConnector("ldap", ldap_tree.config(page_size=2)) as conn:
        items = list(conn.full_import())

    assert all(isinstance(i, ImportedObject) for i in items)
    objects = {i.attributes["cn"][0]: i for i in items if isinstance(i, ImportedObject)}
    assert set(objects) == {"Ann", "Bob", "Cid"}
    for cn, obj in objects.items():
        assert obj.anchor == uuids[cn]
        assert obj.object_type == "person"
        assert obj.dn == obj.locator == dn_in(ldap_tree, cn)
        assert obj.attributes["givenName"] == [cn.lower()]  # server's canonical case
        assert obj.attributes["objectClass"] == ["inetOrgPerson"]
        assert "entryUUID" not in obj.attributes


def test_full_import_binary_values_and_requested_attributes(ldap_tree: LdapTree) -> None:
    dn = dn_in(ldap_tree, "Pic")
    ldap_tree.conn.add(
        dn,
        attributes={
            "objectClass": ["inetOrgPerson"],
            "cn": ["Pic"],
            "sn": ["S"],
            "jpegPhoto": [b"\xff\xd8\xff"],
        },
    )
    with LdapConnector("ldap", ldap_tree.config(attributes=["cn", "jpegPhoto"])) as conn:
        (obj,) = list(conn.full_import())
    assert isinstance(obj, ImportedObject)
    assert obj.attributes["jpegPhoto"] == ["base64:/9j/"]
    assert set(obj.attributes) == {"cn", "jpegPhoto", "objectClass"}  # objectClass always requested
    assert obj.anchor


def test_full_import_maps_object_classes_to_types(ldap_tree: LdapTree) -> None:
    ldap_tree.add(dn_in(ldap_tree, "P"), {"objectClass": ["inetOrgPerson"], "cn": ["P"], "sn": ["S"]})
    ldap_tree.add(
        f"cn=G,{ldap_tree.base_dn}", {"objectClass": ["groupOfNames"], "cn": ["G"], "member": ["cn=x"]}
    )
    config = ldap_tree.config(object_classes={"person": "inetOrgPerson", "group": "groupOfNames"})
    with LdapConnector("ldap", config) as conn:
        types = {
            i.attributes["cn"][0]: i.object_type for i in conn.full_import() if isinstance(i, ImportedObject)
        }
    assert types == {"P": "person", "G": "group"}


def test_full_import_without_anchor_reports_failure(ldap_tree: LdapTree) -> None:
    ldap_tree.add(
        dn_in(ldap_tree, "NoMail"), {"objectClass": ["inetOrgPerson"], "cn": ["NoMail"], "sn": ["S"]}
    )
    with LdapConnector("ldap", ldap_tree.config(anchor_attribute="mail")) as conn:
        (item,) = list(conn.full_import())
    assert isinstance(item, ImportFailure)
    assert item.error_type == "import-missing-anchor"
    assert item.locator == dn_in(ldap_tree, "NoMail")


# ---------------------------------------------------------------------------------------- add
def test_add_returns_anchor_and_readd_converts_to_update(
    ldap_tree: LdapTree, connector: LdapConnector
) -> None:
    dn = dn_in(ldap_tree, "Ann Lee")
    export = pending("add", dn, attributes=person_attrs("Ann Lee", "Lee", mail=["ann@example.org"]))

    first = connector.apply(export)
    entry = ldap_tree.read(dn)
    assert entry is not None
    assert first.anchor == entry["entryUUID"][0]
    assert first.dn == dn and first.actions == ()
    assert entry["mail"] == ["ann@example.org"] and entry["sn"] == ["Lee"]

    again = connector.apply(export)
    assert again.actions == ("converted-add-to-update",)
    assert again.anchor == first.anchor
    assert ldap_tree.read(dn) == entry

    # A re-add carrying new values converts to an update that sets them (RDN value kept).
    changed = pending("add", dn, attributes=person_attrs("Ann Lee", "Lee-Smith", mail=["a@x.org", "b@x.org"]))
    assert connector.apply(changed).actions == ("converted-add-to-update",)
    after = ldap_tree.read(dn)
    assert after is not None
    assert after["sn"] == ["Lee-Smith"] and sorted(after["mail"]) == ["a@x.org", "b@x.org"]
    assert after["entryUUID"] == entry["entryUUID"]


def test_an_add_takes_its_anchor_from_the_response_without_reading_the_entry(
    ldap_tree: LdapTree, connector: LdapConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slapd answers the add's RFC 4527 post-read control: one round trip per add, not two."""
    reads: list[str] = []
    read = LdapConnector._read

    def counted(self: LdapConnector, dn: str, *args: object, **kw: object) -> object:
        reads.append(dn)
        return read(self, dn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(LdapConnector, "_read", counted)
    dn = dn_in(ldap_tree, "Post Read")
    outcome = connector.apply(pending("add", dn, attributes=person_attrs("Post Read")))
    entry = ldap_tree.read(dn)
    assert entry is not None and outcome.anchor == entry["entryUUID"][0]
    assert reads == []
    # A re-add (converted to an update) reads the entry, and still reports its anchor.
    again = connector.apply(pending("add", dn, attributes=person_attrs("Post Read")))
    assert again.anchor == outcome.anchor and dn in reads


def test_add_creates_missing_parents(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "Deep", "team", "dept")
    outcome = connector.apply(pending("add", dn, attributes=person_attrs("Deep")))
    assert outcome.actions == ("created-parent",)
    assert ldap_tree.read(f"ou=dept,{ldap_tree.base_dn}") is not None
    assert ldap_tree.read(f"ou=team,ou=dept,{ldap_tree.base_dn}") is not None
    assert ldap_tree.read(dn) is not None


def test_add_without_create_parents_is_non_existent_parent(ldap_tree: LdapTree) -> None:
    dn = dn_in(ldap_tree, "Orphan", "missing")
    with (
        LdapConnector("ldap", ldap_tree.config(create_parents=False)) as conn,
        pytest.raises(DataError) as err,
    ):
        conn.apply(pending("add", dn, attributes=person_attrs("Orphan")))
    assert err.value.error_type == "non-existent-parent"
    assert ldap_tree.read(f"ou=missing,{ldap_tree.base_dn}") is None


def test_object_class_violation_is_schema_violation(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "No Surname")
    attrs = person_attrs("No Surname")
    del attrs["sn"]
    with pytest.raises(DataError) as err:
        connector.apply(pending("add", dn, attributes=attrs))
    assert err.value.error_type == "schema-violation"
    assert dn in str(err.value) and "sn" in str(err.value)
    assert ldap_tree.read(dn) is None


def test_undefined_attribute_is_schema_violation(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "Odd")
    with pytest.raises(DataError) as err:
        connector.apply(pending("add", dn, attributes=person_attrs("Odd", shoeSize=["44"])))
    assert err.value.error_type == "schema-violation"


def test_dn_escaping_round_trips(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    cn = "Doe, John + Co"
    dn = dn_in(ldap_tree, cn, "R&D, Labs")
    outcome = connector.apply(pending("add", dn, attributes=person_attrs(cn)))
    assert outcome.actions == ("created-parent",)
    entry = ldap_tree.read(dn)
    assert entry is not None and entry["cn"] == [cn]
    assert ldap_tree.read(f"ou={escape_rdn('R&D, Labs')},{ldap_tree.base_dn}") is not None

    (obj,) = [i for i in connector.full_import() if isinstance(i, ImportedObject)]
    assert obj.attributes["cn"] == [cn]
    assert obj.anchor == outcome.anchor
    # The re-imported DN (server-escaped) finds the same entry.
    update = pending("update", obj.dn or "", attributes={"title": AttrChange(op="replace", values=["Boss"])})
    assert connector.apply(update).anchor == outcome.anchor
    assert ldap_tree.read(dn, ["title"]) == {"title": ["Boss"]}


# ---------------------------------------------------------------------------------------- update
def test_update_replace_add_delete_idempotent(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "Upd")
    anchor = connector.apply(
        pending("add", dn, attributes=person_attrs("Upd", mail=["a@x.org", "b@x.org"], title=["Old"]))
    ).anchor
    update = pending(
        "update",
        dn,
        anchor=anchor,
        attributes={
            "sn": AttrChange(op="replace", values=["New"]),
            "mail": AttrChange(op="add", values=["c@x.org", "a@x.org"]),
            "telephoneNumber": AttrChange(op="add", values=["+1 555"]),
            "title": AttrChange(op="replace", values=[]),
            "description": AttrChange(op="delete", values=["absent"]),
        },
    )
    for _ in range(2):  # the second delivery must have no further effect and not fail
        outcome = connector.apply(update)
        assert outcome.anchor == anchor and outcome.dn == dn
        entry = ldap_tree.read(dn)
        assert entry is not None
        assert entry["sn"] == ["New"]
        assert sorted(entry["mail"]) == ["a@x.org", "b@x.org", "c@x.org"]
        assert entry["telephoneNumber"] == ["+1 555"]
        assert "title" not in entry

    delete = pending(
        "update",
        dn,
        anchor=anchor,
        attributes={"mail": AttrChange(op="delete", values=["b@x.org", "zzz@x.org"])},
    )
    for _ in range(2):
        connector.apply(delete)
        entry = ldap_tree.read(dn)
        assert entry is not None and sorted(entry["mail"]) == ["a@x.org", "c@x.org"]

    drop_all = pending("update", dn, anchor=anchor, attributes={"mail": AttrChange(op="delete", values=[])})
    connector.apply(drop_all)
    connector.apply(drop_all)
    entry = ldap_tree.read(dn)
    assert entry is not None and "mail" not in entry


def _count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every entry lookup the connector makes (by DN or by anchor), in order."""
    seen: list[str] = []
    for name in ("_read", "_find"):
        original = getattr(LdapConnector, name)

        def counted(
            self: LdapConnector, key: str, *args: object, _f: object = original, **kw: object
        ) -> object:
            seen.append(key)
            return _f(self, key, *args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(LdapConnector, name, counted)
    return seen


def test_a_replace_only_update_is_one_asserted_modify(
    ldap_tree: LdapTree, connector: LdapConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    dn = dn_in(ldap_tree, "Asserted")
    anchor = connector.apply(pending("add", dn, attributes=person_attrs("Asserted", title=["Old"]))).anchor
    lookups = _count_lookups(monkeypatch)
    update = pending(
        "update",
        dn,
        anchor=anchor,
        attributes={
            "title": AttrChange(op="replace", values=["New"]),
            "mail": AttrChange(op="replace", values=[]),
        },
    )
    for _ in range(2):  # delivered twice: the same entry, no error
        outcome = connector.apply(update)
        assert outcome.anchor == anchor and outcome.dn == dn
        entry = ldap_tree.read(dn)
        assert entry is not None and entry["title"] == ["New"] and not entry.get("mail")
    assert lookups == []  # no read before the write


def test_an_asserted_update_never_changes_another_entry_at_a_stale_dn(
    ldap_tree: LdapTree, connector: LdapConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry was renamed elsewhere and another took its old DN: the assertion fails there, and the
    update finds its own entry by the anchor."""
    old, moved = dn_in(ldap_tree, "Stale"), dn_in(ldap_tree, "Moved")
    anchor = connector.apply(pending("add", old, attributes=person_attrs("Stale", title=["Mine"]))).anchor
    connector.apply(pending("rename", old, anchor=anchor, new_dn=moved))
    connector.apply(pending("add", old, attributes=person_attrs("Stale", title=["Theirs"])))
    lookups = _count_lookups(monkeypatch)

    update = pending(
        "update", old, anchor=anchor, attributes={"title": AttrChange(op="replace", values=["Set"])}
    )
    outcome = connector.apply(update)

    assert outcome.dn == moved and outcome.anchor == anchor
    assert ldap_tree.read(moved, ["title"]) == {"title": ["Set"]}
    assert ldap_tree.read(old, ["title"]) == {"title": ["Theirs"]}  # the other entry is untouched
    assert lookups == [anchor]  # found by the anchor after the assertion failed
    # Gone from the DN altogether: the same fallback.
    connector.apply(pending("delete", old))  # the other entry, by its DN
    again = pending(
        "update", old, anchor=anchor, attributes={"title": AttrChange(op="replace", values=["Again"])}
    )
    assert connector.apply(again).dn == moved
    assert ldap_tree.read(moved, ["title"]) == {"title": ["Again"]}


def test_update_add_value_differing_only_in_case_is_tolerated(
    ldap_tree: LdapTree, connector: LdapConnector
) -> None:
    dn = dn_in(ldap_tree, "Case")
    anchor = connector.apply(pending("add", dn, attributes=person_attrs("Case", mail=["a@x.org"]))).anchor
    # mail matches case-insensitively on the server: "A@X.ORG" is already there.
    connector.apply(
        pending("update", dn, anchor=anchor, attributes={"mail": AttrChange(op="add", values=["A@X.ORG"])})
    )
    entry = ldap_tree.read(dn)
    assert entry is not None and entry["mail"] == ["a@x.org"]


def test_update_by_dn_and_missing_object(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "ByDn")
    connector.apply(pending("add", dn, attributes=person_attrs("ByDn")))
    connector.apply(pending("update", dn, attributes={"title": AttrChange(op="replace", values=["T"])}))
    assert ldap_tree.read(dn, ["title"]) == {"title": ["T"]}

    ghost = dn_in(ldap_tree, "Ghost")
    with pytest.raises(DataError) as err:
        connector.apply(
            pending("update", ghost, attributes={"title": AttrChange(op="replace", values=["T"])})
        )
    assert err.value.error_type == "cd-missing-object"
    with pytest.raises(DataError) as err:
        connector.apply(
            pending(
                "update",
                ghost,
                anchor="00000000-0000-0000-0000-000000000000",
                attributes={"title": AttrChange(op="replace", values=["T"])},
            )
        )
    assert err.value.error_type == "cd-missing-object"


# ---------------------------------------------------------------------------------------- rename
def test_rename_keeps_entry_uuid_and_is_idempotent(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    old = dn_in(ldap_tree, "Old Name")
    anchor = connector.apply(pending("add", old, attributes=person_attrs("Old Name"))).anchor
    new = dn_in(ldap_tree, "New Name", "moved")
    rename = pending(
        "rename",
        old,
        anchor=anchor,
        new_dn=new,
        attributes={"cn": AttrChange(op="replace", values=["New Name"])},
    )
    for actions in (("created-parent",), ()):
        outcome = connector.apply(rename)
        assert outcome.dn == new and outcome.anchor == anchor and outcome.actions == actions
        assert ldap_tree.read(old) is None
        entry = ldap_tree.read(new)
        assert entry is not None
        assert entry["entryUUID"] == [anchor]
        assert entry["cn"] == ["New Name"]  # old RDN value deleted


def test_rename_by_dn_redelivered_is_noop(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    old = dn_in(ldap_tree, "A")
    anchor = connector.apply(pending("add", old, attributes=person_attrs("A"))).anchor
    new = dn_in(ldap_tree, "B")
    rename = pending("rename", old, new_dn=new)
    assert connector.apply(rename).anchor == anchor
    assert connector.apply(rename).anchor == anchor
    entry = ldap_tree.read(new)
    assert entry is not None and entry["entryUUID"] == [anchor] and entry["cn"] == ["B"]


def test_rename_to_existing_other_dn_fails(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    a, b = dn_in(ldap_tree, "A"), dn_in(ldap_tree, "B")
    anchor = connector.apply(pending("add", a, attributes=person_attrs("A"))).anchor
    connector.apply(pending("add", b, attributes=person_attrs("B")))
    with pytest.raises(DataError) as err:
        connector.apply(pending("rename", a, anchor=anchor, new_dn=b))
    assert err.value.error_type == "rename-to-existing-dn"
    assert b in str(err.value)
    entry = ldap_tree.read(a)
    assert entry is not None and entry["entryUUID"] == [anchor]


def test_rename_under_missing_parent_without_create_parents(ldap_tree: LdapTree) -> None:
    old = dn_in(ldap_tree, "Stay")
    with LdapConnector("ldap", ldap_tree.config(create_parents=False)) as conn:
        anchor = conn.apply(pending("add", old, attributes=person_attrs("Stay"))).anchor
        with pytest.raises(DataError) as err:
            conn.apply(pending("rename", old, anchor=anchor, new_dn=dn_in(ldap_tree, "Stay", "nowhere")))
    assert err.value.error_type == "non-existent-parent"
    assert ldap_tree.read(old) is not None


# ---------------------------------------------------------------------------------------- delete
def test_delete_and_redelete(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    dn = dn_in(ldap_tree, "Gone")
    anchor = connector.apply(pending("add", dn, attributes=person_attrs("Gone"))).anchor
    first = connector.apply(pending("delete", dn, anchor=anchor))
    assert first.actions == () and first.anchor == anchor
    assert ldap_tree.read(dn) is None
    again = connector.apply(pending("delete", dn, anchor=anchor))
    assert again.actions == ("already-deleted",)
    assert connector.apply(pending("delete", dn)).actions == ("already-deleted",)


# ---------------------------------------------------------------------------------------- connection loss
def test_reconnects_after_connection_loss(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    connector.test_connection()
    assert connector._conn is not None
    connector._conn.socket.close()  # simulate a dropped connection under the connector's feet
    dn = dn_in(ldap_tree, "After Drop")
    assert connector.apply(pending("add", dn, attributes=person_attrs("After Drop"))).anchor
    assert ldap_tree.read(dn) is not None


def test_server_down_is_retriable_and_connector_recovers(tmp_path: Path) -> None:
    server = Slapd(tmp_path, port=free_port()).start()
    try:
        config = LdapConnectorConfig(
            kind="ldap",
            uri=server.uri,
            bind_dn=server.bind_dn,
            password=server.password,
            base_dn=server.people_dn,
            connect_timeout_s=1.0,
        )
        with LdapConnector("ldap", config) as conn:
            conn.test_connection()
            server.stop()
            dn = f"cn=Later,{server.people_dn}"
            add = pending("add", dn, attributes=person_attrs("Later"))
            with pytest.raises(RetriableError) as err:
                conn.apply(add)
            assert err.value.error_type == "cd-connection-failure"
            assert server.password not in str(err.value)
            with pytest.raises(RetriableError) as err:
                list(conn.full_import())
            assert err.value.error_type == "no-start-connection"

            server.start()  # same port and database
            assert conn.apply(add).anchor
            assert [o.dn for o in conn.full_import()] == [dn]
    finally:
        server.stop()


def test_import_and_exports_interleave_on_one_connection(
    ldap_tree: LdapTree, connector: LdapConnector
) -> None:
    for cn in ("A", "B", "C"):
        ldap_tree.add(dn_in(ldap_tree, cn), {"objectClass": ["inetOrgPerson"], "cn": [cn], "sn": ["S"]})
    with LdapConnector("ldap", ldap_tree.config(page_size=1)) as conn:
        seen = []
        for obj in conn.full_import():
            assert isinstance(obj, ImportedObject)
            seen.append(obj.attributes["cn"][0])
            title = AttrChange(op="replace", values=["seen"])
            conn.apply(pending("update", obj.dn or "", anchor=obj.anchor, attributes={"title": title}))
    assert sorted(seen) == ["A", "B", "C"]
    for cn in seen:
        assert ldap_tree.read(dn_in(ldap_tree, cn), ["title"]) == {"title": ["seen"]}


def test_map_ldap_error_redacts_secret_and_names_dn() -> None:
    exc = LDAPObjectClassViolationResult(result=65, description="objectClassViolation", message="pw s3cret!")
    err = map_ldap_error(exc, operation="add", dn="cn=x,dc=y", secret="s3cret!")
    assert isinstance(err, DataError) and err.error_type == "schema-violation"
    assert "s3cret!" not in str(err) and "cn=x,dc=y" in str(err)


# ---------------------------------------------------------------------------------------- slapd helper
def test_slapd_lifecycle(tmp_path: Path) -> None:
    server = Slapd(tmp_path, suffix="dc=acme,dc=test")
    with server:
        pid = int((tmp_path / "slapd.pid").read_text())
        assert server.uri.startswith("ldap://127.0.0.1:")
        assert server.entry_count() == 2  # suffix and ou=people
        assert server.password not in (tmp_path / "slapd.conf").read_text()
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not server.running


def test_slapd_syncs_its_writes_unless_told_not_to(tmp_path: Path) -> None:
    """``dbnosync`` in every mdb database only where asked (the test suite's default, tests/conftest.py);
    a directory written without syncs still holds its writes after a restart."""
    assert slapd_module.SYNC_WRITES is False  # the suite's setting
    durable = Slapd(tmp_path / "durable", sessionlog_source="accesslog", sync_writes=True)
    assert "dbnosync" not in durable._config(tmp_path / "db")
    fast = Slapd(tmp_path / "fast", sessionlog_source="accesslog")
    assert fast._config(tmp_path / "db").count("dbnosync") == 2  # the directory and its accesslog
    with fast:
        fast.add_ou("more", fast.suffix)
        count = fast.entry_count()
        os.kill(int((tmp_path / "fast" / "slapd.pid").read_text()), signal.SIGKILL)  # no orderly close
        assert fast._proc is not None and fast._proc.wait(10) == -signal.SIGKILL
    with fast:
        assert fast.entry_count() == count and count > 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_start_tls_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", *files, *subject],
        check=True,
        capture_output=True,
    )
    tls = f"TLSCertificateFile {cert}\nTLSCertificateKeyFile {key}"
    with Slapd(tmp_path / "slapd", global_config=tls) as server:
        fields = {
            "kind": "ldap",
            "uri": server.uri,
            "bind_dn": server.bind_dn,
            "password": server.password,
            "base_dn": server.people_dn,
            "start_tls": True,
        }
        with LdapConnector("ldap", LdapConnectorConfig(**fields)) as conn, pytest.raises(FatalError) as err:
            conn.test_connection()  # self-signed, no ca_file: verification (on by default) refuses it
        assert err.value.error_type == "no-start-tls"
        with LdapConnector("ldap", LdapConnectorConfig(**fields, ca_file=cert)) as conn:
            conn.test_connection()
            assert conn._conn is not None and conn._conn.tls_started
