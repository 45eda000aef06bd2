"""The Active Directory dialect (connectors/ldap/ad.py) against recorded AD exchanges.

No domain controller runs here. Each test starts ``tests/fixtures/ldap_replay.ReplayServer`` on 127.0.0.1:
a real LDAP peer over TCP (plain, StartTLS or LDAPS with a throwaway CA, verification on) that answers
the connector's ldap3 requests with the BER responses recorded in tests/fixtures/ad_recordings/*.yaml,
which were written from Microsoft's documentation of AD's behaviour (see the README there). Every test
ends with ``assert_complete()``: the connector sent exactly the recorded requests, nothing else.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors import base
from connectors.base import Checkpoint, CursorExpired, DeletedObject, ImportedObject
from connectors.ldap import LdapConnector
from connectors.ldap.ad import (
    AdLdapConnector,
    encode_unicode_pwd,
    guid_filter,
    guid_to_bytes,
    guid_to_str,
    map_ad_error,
)
from connectors.ldap.slapd import free_port
from schemas.config import LdapConnectorConfig
from schemas.errors import ConfigError, DataError, FatalError, RetriableError
from schemas.records import AttrChange, PendingExport
from tests.fixtures.ldap_replay import Recording, ReplayServer, TlsFiles, make_tls_files

# isort: split
from ldap3.core.exceptions import LDAPOperationResult

RECORDINGS = Path(__file__).resolve().parent.parent / "fixtures" / "ad_recordings"
BASE_DN = "OU=Staff,DC=corp,DC=example"
BIND_DN = "CN=svc-idsync,OU=Service Accounts,DC=corp,DC=example"
BIND_PASSWORD = "replay-bind-secret"
ADA_GUID = "00112233-4455-6677-8899-aabbccddeeff"
GRACE_GUID = "d4c3b2a1-f6e5-1807-293a-4b5c6d7e8f90"
ALAN_GUID = "3c2d1e0f-5a4b-7869-8796-a5b4c3d2e1f0"
LINUS_GUID = "98badcfe-5476-1032-0123-456789abcdef"
ADMIN_GUID = "88776655-aa99-ccbb-0011-223344556677"
ADA_DN = "CN=Ada Lovelace,OU=Staff,DC=corp,DC=example"
DELTA_ATTRIBUTES = ["cn", "sAMAccountName", "displayName", "title", "accountDisabled"]

_seq = itertools.count(1)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("ad-tls"))


def serve(*names: str, tls: TlsFiles | None = None, ldaps: bool = False) -> ReplayServer:
    merged = Recording([], [])
    for name in names:
        part = Recording.load(RECORDINGS / name)
        merged.exchanges += part.exchanges
        merged.sources += part.sources
    return ReplayServer(merged, tls=tls, ldaps=ldaps).start()


@pytest.fixture
def servers() -> Iterator[list[ReplayServer]]:
    """Servers a test starts (``started.append(serve(...))``), stopped afterwards."""
    started: list[ReplayServer] = []
    yield started
    for server in started:
        server.stop()


def config(server: ReplayServer, tls: TlsFiles | None = None, **overrides: Any) -> LdapConnectorConfig:
    fields: dict[str, Any] = {
        "kind": "ldap",
        "dialect": "ad",
        "uri": server.uri,
        "bind_dn": BIND_DN,
        "password": BIND_PASSWORD,
        "base_dn": BASE_DN,
        "page_size": 2,
        "connect_timeout_s": 2.0,
    }
    if tls is not None:
        fields["ca_file"] = tls.ca
    fields.update(overrides)
    return LdapConnectorConfig(**fields)


def connect(server: ReplayServer, tls: TlsFiles | None = None, **overrides: Any) -> AdLdapConnector:
    conn = LdapConnector("ad", config(server, tls, **overrides))
    assert isinstance(conn, AdLdapConnector)
    return conn


def pending(op: str, dn: str, **fields: Any) -> PendingExport:
    n = next(_seq)
    data: dict[str, Any] = {
        "export_id": f"ad-{n}",
        "seq": n,
        "connector": "ad",
        "mv_id": f"mv-{n}",
        "op": op,
        "object_type": "person",
        "dn": dn,
        "ts_ms": 0,
    }
    data.update(fields)
    return PendingExport.model_validate(data)


def replace(**attrs: list[str]) -> dict[str, AttrChange]:
    return {name: AttrChange(op="replace", values=values) for name, values in attrs.items()}


# ---------------------------------------------------------------------------------------- objectGUID
def test_guid_bytes_to_text_uses_the_microsoft_mixed_endian_layout() -> None:
    raw = bytes.fromhex("33221100554477668899aabbccddeeff")
    assert guid_to_str(raw) == "00112233-4455-6677-8899-aabbccddeeff"
    assert guid_to_bytes("00112233-4455-6677-8899-aabbccddeeff") == raw


@pytest.mark.parametrize(
    "text", [ADA_GUID, GRACE_GUID, ALAN_GUID, LINUS_GUID, "{D4C3B2A1-F6E5-1807-293A-4B5C6D7E8F90}"]
)
def test_guid_round_trip(text: str) -> None:
    raw = guid_to_bytes(text)
    assert len(raw) == 16
    assert guid_to_str(raw) == text.strip("{}").lower()


def test_guid_filter_escapes_every_byte() -> None:
    assert guid_filter(ADA_GUID) == r"(objectGUID=\33\22\11\00\55\44\77\66\88\99\aa\bb\cc\dd\ee\ff)"


def test_guid_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        guid_to_str(b"\x01" * 15)
    with pytest.raises(ValueError):
        guid_to_bytes("not-a-guid")


def test_unicode_pwd_is_the_quoted_password_in_utf16le() -> None:
    assert encode_unicode_pwd("Pa$$w0rd") == '"Pa$$w0rd"'.encode("utf-16-le")
    assert encode_unicode_pwd("ü€") == bytes.fromhex("2200fc00ac202200")


# ---------------------------------------------------------------------------------------- config
def test_dialect_ad_builds_the_ad_connector_with_its_defaults(servers: list[ReplayServer]) -> None:
    conn = LdapConnector("ad", LdapConnectorConfig(kind="ldap", uri="ldap://127.0.0.1:1", base_dn=BASE_DN))
    assert type(conn) is LdapConnector
    ad = LdapConnector(
        "ad", LdapConnectorConfig(kind="ldap", uri="ldap://127.0.0.1:1", base_dn=BASE_DN, dialect="ad")
    )
    assert isinstance(ad, AdLdapConnector)
    assert ad.config.anchor_attribute == "objectGUID"
    assert ad.config.object_classes == {"person": "user"}
    caps = base.capabilities(ad)
    assert {"full-import", "delta-import", "export", "password-set", "test-connection"} <= set(caps)
    assert "follow" not in caps, "AD has no RFC 4533: the AD dialect must not claim follow"


def test_another_anchor_attribute_is_a_config_error() -> None:
    cfg = LdapConnectorConfig(
        kind="ldap", uri="ldap://127.0.0.1:1", base_dn=BASE_DN, dialect="ad", anchor_attribute="entryUUID"
    )
    with pytest.raises(ConfigError, match="objectGUID"):
        LdapConnector("ad", cfg)


# ---------------------------------------------------------------------------------------- full import
def test_full_import_pages_and_anchors_on_object_guid(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("full_import.yaml"))
    with connect(server) as conn:
        items = list(conn.full_import())
    server.assert_complete()
    assert all(isinstance(i, ImportedObject) for i in items)
    objects = {i.anchor: i for i in items if isinstance(i, ImportedObject)}
    assert set(objects) == {ADA_GUID, GRACE_GUID, ALAN_GUID}, "three users over two pages"
    ada = objects[ADA_GUID]
    assert ada.object_type == "person"
    assert ada.dn == ADA_DN and ada.locator == ADA_DN
    assert ada.attributes["sAMAccountName"] == ["ada"]
    assert "objectGUID" not in ada.attributes, "the anchor is not repeated as an attribute"
    # objectSid is binary: base64, never mangled into text.
    assert ada.attributes["objectSid"] == ["base64:AQUAAAAAAAUVAAAA3PTcO4M9K0aCi6YoUQQAAA=="]
    assert ada.attributes["accountDisabled"] == ["false"]
    assert objects[GRACE_GUID].attributes["accountDisabled"] == ["true"]  # 514
    assert objects[ALAN_GUID].attributes["accountDisabled"] == ["false"]  # 66048 = 0x10200
    assert objects[ALAN_GUID].attributes["userAccountControl"] == ["66048"]


def test_full_import_types_computers_by_their_most_specific_class(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("full_import_types.yaml"))
    classes = {"person": "user", "computer": "computer"}
    with connect(server, object_classes=classes, attributes=["cn", "accountDisabled"]) as conn:
        items = list(conn.full_import())
    server.assert_complete()
    types = {i.attributes["cn"][0]: i.object_type for i in items if isinstance(i, ImportedObject)}
    assert types == {"Ada Lovelace": "person", "WS042": "computer"}


# ---------------------------------------------------------------------------------------- DirSync
def test_dirsync_delta_with_a_tombstone_and_a_more_data_continuation(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("dirsync.yaml"))
    with connect(server, attributes=DELTA_ATTRIBUTES) as conn:
        mark = conn.current_watermark()
        assert mark.startswith("dirsync:")
        items = list(conn.delta_import(mark))
        last = items[-1]
        assert isinstance(last, Checkpoint)
        rest = list(conn.delta_import(last.watermark))
    server.assert_complete()

    kinds = [type(i).__name__ for i in items]
    assert kinds == [
        "ImportedObject",  # Ada, title changed
        "DeletedObject",  # Grace's tombstone
        "Checkpoint",  # more data: a checkpoint after each response
        "ImportedObject",  # Linus, new
        "DeletedObject",  # Administrator changed outside OU=Staff: out of scope
        "Checkpoint",
    ]
    ada, grace, first, linus, admin, final = items
    assert isinstance(ada, ImportedObject) and ada.anchor == ADA_GUID
    # DirSync only sent the changed title; the connector re-read the full image.
    assert ada.attributes["title"] == ["Principal Analyst"]
    assert ada.attributes["sAMAccountName"] == ["ada"]
    assert ada.attributes["accountDisabled"] == ["false"]
    assert isinstance(grace, DeletedObject) and grace.anchor == GRACE_GUID
    assert grace.object_type == "person"
    assert isinstance(linus, ImportedObject) and linus.anchor == LINUS_GUID
    assert isinstance(admin, DeletedObject) and admin.anchor == ADMIN_GUID
    assert isinstance(first, Checkpoint) and isinstance(final, Checkpoint)
    assert len({mark, first.watermark, final.watermark}) == 3, "each response's cookie is a new watermark"
    assert [type(i) for i in rest] == [Checkpoint], "nothing changed since the last checkpoint"


def test_dirsync_cookie_rejected_is_cursor_expired_and_missing_right_is_fatal(
    servers: list[ReplayServer],
) -> None:
    servers.append(server := serve("dirsync_refused.yaml"))
    stale = "dirsync:" + "TVNEUwMAAAAAAAAAmaAAAAAAAAA="  # base64 of the cookie the recording rejects
    with connect(server, attributes=DELTA_ATTRIBUTES) as conn:
        with pytest.raises(CursorExpired, match="rejected the DirSync cookie"):
            list(conn.delta_import(stale))
        with pytest.raises(FatalError) as err:
            conn.current_watermark()
    server.assert_complete()
    assert err.value.error_type == "no-start-permission"
    assert "Replicating Directory Changes" in err.value.message
    assert "Traceback" not in err.value.message and BIND_PASSWORD not in err.value.message


def test_watermark_of_the_other_delta_mode_is_cursor_expired(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("common.yaml"))
    with connect(server) as dirsync, pytest.raises(CursorExpired):
        list(dirsync.delta_import("usn:dc01.corp.example:20480"))
    with connect(server, ad_delta="usnchanged") as usn, pytest.raises(CursorExpired):
        list(usn.delta_import("dirsync:TVNEUw=="))
    assert server.requests == [], "an unusable watermark is refused before asking the server"


# ---------------------------------------------------------------------------------------- uSNChanged
def test_usnchanged_delta_with_tombstones_from_the_deleted_objects_container(
    servers: list[ReplayServer],
) -> None:
    servers.append(server := serve("usnchanged.yaml"))
    with connect(server, ad_delta="usnchanged", attributes=DELTA_ATTRIBUTES) as conn:
        mark = conn.current_watermark()
        assert mark == "usn:dc01.corp.example:20480"
        items = list(conn.delta_import(mark))
        last = items[-1]
        assert isinstance(last, Checkpoint) and last.watermark == "usn:dc01.corp.example:20533"
        assert list(conn.delta_import(last.watermark)) == [last], "nothing new since the checkpoint"
        with pytest.raises(CursorExpired, match="dc02"):
            list(conn.delta_import("usn:dc02.corp.example:20400"))
        with pytest.raises(CursorExpired, match="restored"):
            list(conn.delta_import("usn:dc01.corp.example:99999"))
    server.assert_complete()
    ada, grace, checkpoint = items  # the Contractors tombstone is outside base_dn: not reported
    assert isinstance(ada, ImportedObject) and ada.anchor == ADA_GUID
    assert ada.attributes["title"] == ["Principal Analyst"]
    assert isinstance(grace, DeletedObject) and grace.anchor == GRACE_GUID and grace.object_type == "person"
    assert checkpoint is last


# ---------------------------------------------------------------------------------------- passwords
@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
def test_set_password_sends_quoted_utf16le_unicode_pwd_over_tls(
    transport: str, tls_files: TlsFiles, servers: list[ReplayServer], caplog: pytest.LogCaptureFixture
) -> None:
    servers.append(server := serve("password.yaml", tls=tls_files, ldaps=transport == "ldaps"))
    caplog.set_level(logging.DEBUG)
    good, weak = "Tr0ub4dor&3-horse", "short"
    with connect(server, tls_files, start_tls=transport == "starttls") as conn:
        conn.set_password(ADA_GUID, None, SecretStr(good))
        with pytest.raises(DataError) as err:
            conn.set_password(ADA_GUID, None, SecretStr(weak))
    server.assert_complete()  # every request of password.yaml demands an encrypted connection
    sent = [r for r in server.requests if r["op"] == "modify"]
    assert [r["changes"][0]["values"] for r in sent] == [
        [('"' + good + '"').encode("utf-16-le")],
        [('"' + weak + '"').encode("utf-16-le")],
    ]
    if transport == "starttls":
        assert server.requests[0] == {"op": "extended", "name": "1.3.6.1.4.1.1466.20037", "tls": False}
    assert all(r["tls"] for r in server.requests if r["op"] != "extended"), "all after StartTLS"
    assert err.value.error_type == "constraint-violation"
    assert "password does not meet" in err.value.message and "0000052D" in err.value.message
    for secret in (good, weak, BIND_PASSWORD):
        assert secret not in err.value.message
        assert secret not in caplog.text


def test_password_over_plain_ldap_is_refused_before_anything_is_sent(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("password_plain.yaml"))
    with connect(server) as conn:
        with pytest.raises(FatalError) as err:
            conn.set_password(ADA_GUID, None, SecretStr("Secret-123"))
        assert err.value.error_type == "password-needs-encryption"
        add = pending(
            "add",
            "CN=Linus Torvalds,OU=Staff,DC=corp,DC=example",
            attributes=replace(objectClass=["user"], cn=["Linus Torvalds"], unicodePwd=["Secret-123"]),
        )
        with pytest.raises(FatalError, match="unencrypted"):
            conn.apply(add)
    assert "Secret-123" not in err.value.message
    assert server.requests == [], "not even a bind: the refusal comes before connecting"


def test_ad_refusal_of_a_plain_unicode_pwd_modify_is_mapped(servers: list[ReplayServer]) -> None:
    # What AD answers if unicodePwd were sent in clear (the connector never does; see the test above).
    from ldap3 import MODIFY_REPLACE, NONE, Connection, Server

    servers.append(server := serve("password_plain.yaml"))
    raw = Connection(
        Server(server.uri, get_info=NONE), BIND_DN, BIND_PASSWORD, raise_exceptions=True, auto_bind=True
    )
    try:
        with pytest.raises(LDAPOperationResult) as refused:
            raw.modify(ADA_DN, {"unicodePwd": [(MODIFY_REPLACE, [encode_unicode_pwd("x")])]})
    finally:
        raw.unbind()
    mapped = map_ad_error(refused.value, operation="password set", dn=ADA_DN)
    assert isinstance(mapped, DataError) and mapped.error_type == "unwilling-to-perform"
    assert "not encrypted" in mapped.message and "0000001F" in mapped.message
    assert "\n" not in mapped.message and "\x00" not in mapped.message


# ---------------------------------------------------------------------------------------- userAccountControl
def test_enable_and_disable_keep_the_other_account_control_bits(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("uac.yaml"))
    enable = pending("update", ADA_DN, anchor=ADA_GUID, attributes=replace(accountDisabled=["false"]))
    disable = pending(
        "update",
        "CN=Grace Hopper,OU=Staff,DC=corp,DC=example",
        anchor=GRACE_GUID,
        attributes=replace(accountDisabled=["TRUE"]),
    )
    with connect(server) as conn:
        assert conn.apply(enable).anchor == ADA_GUID
        conn.apply(disable)
        conn.apply(enable)  # re-delivered: the bit is clear already, nothing is written
    server.assert_complete()
    writes = [
        (r["dn"].split(",")[0], r["changes"][0]["values"]) for r in server.requests if r["op"] == "modify"
    ]
    assert writes == [("CN=Ada Lovelace", [b"66048"]), ("CN=Grace Hopper", [b"546"])]


def test_account_disabled_must_be_true_or_false(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("common.yaml"))
    with connect(server) as conn, pytest.raises(DataError, match="true' or 'false'"):
        conn.apply(pending("update", ADA_DN, anchor=ADA_GUID, attributes=replace(accountDisabled=["maybe"])))


def test_new_user_is_created_disabled_then_enabled_after_its_password(
    tls_files: TlsFiles, servers: list[ReplayServer], caplog: pytest.LogCaptureFixture
) -> None:
    servers.append(server := serve("add_user.yaml", tls=tls_files, ldaps=True))
    caplog.set_level(logging.DEBUG)
    add = pending(
        "add",
        "CN=Linus Torvalds,OU=Staff,DC=corp,DC=example",
        attributes=replace(
            objectClass=["top", "person", "organizationalPerson", "user"],
            cn=["Linus Torvalds"],
            sAMAccountName=["linus"],
            userPrincipalName=["linus@corp.example"],
            unicodePwd=["Pengu1n!Pass"],
            accountDisabled=["false"],
        ),
    )
    with connect(server, tls_files) as conn:
        outcome = conn.apply(add)
        again = conn.apply(add)  # re-delivered
    server.assert_complete()
    assert outcome.anchor == LINUS_GUID and outcome.actions == ()
    assert again.anchor == LINUS_GUID and again.actions == ("converted-add-to-update",)
    ops = [r["op"] for r in server.requests if r["op"] != "bind"]
    first = ops[: ops.index("add", 1)]
    assert first == ["add", "search", "modify", "search", "modify"], "add, anchor, password, read, enable"
    assert "Pengu1n!Pass" not in caplog.text


# ---------------------------------------------------------------------------------------- AD errors
def test_recorded_ad_refusals_map_to_mim_error_types(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("errors.yaml"))
    taken = pending(
        "add",
        "CN=Ada Byron,OU=Staff,DC=corp,DC=example",
        attributes=replace(objectClass=["user"], cn=["Ada Byron"], sAMAccountName=["ada"]),
    )
    rename = pending("rename", ADA_DN, anchor=ADA_GUID, new_dn="CN=Alan Turing,OU=Staff,DC=corp,DC=example")
    bad_class = pending(
        "add",
        "OU=Printers,OU=Staff,DC=corp,DC=example",
        object_type="ou",
        attributes=replace(objectClass=["organizationalUnit"], ou=["Printers"], sn=["x"]),
    )
    forbidden = pending(
        "update",
        "CN=Grace Hopper,OU=Staff,DC=corp,DC=example",
        anchor=GRACE_GUID,
        attributes=replace(title=["Rear Admiral"]),
    )
    gone = pending(
        "update", "CN=x,OU=Staff,DC=corp,DC=example", anchor=LINUS_GUID, attributes=replace(title=["y"])
    )
    expected = [
        (taken, "cd-existing-object", "sAMAccountName"),
        (rename, "cd-existing-object", "00002071"),
        (bad_class, "schema-violation", "00002014"),
        (forbidden, "permission-issue", "00002098"),
        (gone, "cd-missing-object", "no entry found"),
    ]
    with connect(server) as conn:
        for export, error_type, text in expected:
            with pytest.raises(DataError) as err:
                conn.apply(export)
            assert err.value.error_type == error_type, (export.op, err.value.message)
            assert text in err.value.message
            assert "\n" not in err.value.message and BIND_PASSWORD not in err.value.message
    server.assert_complete()


@pytest.mark.parametrize(
    ("bind_dn", "password", "reason"),
    [
        (BIND_DN, "not-the-password", "invalid credentials"),
        ("CN=svc-locked,OU=Service Accounts,DC=corp,DC=example", BIND_PASSWORD, "account locked out"),
    ],
)
def test_refused_binds_say_why(bind_dn: str, password: str, reason: str, servers: list[ReplayServer]) -> None:
    servers.append(server := serve("bind_errors.yaml"))
    with connect(server, bind_dn=bind_dn, password=password) as conn, pytest.raises(FatalError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-credentials"
    assert reason in err.value.message
    assert password not in err.value.message and "Traceback" not in err.value.message


def test_unreachable_domain_controller_is_retriable() -> None:
    cfg = LdapConnectorConfig(
        kind="ldap",
        dialect="ad",
        uri=f"ldap://127.0.0.1:{free_port()}",
        base_dn=BASE_DN,
        connect_timeout_s=1.0,
    )
    with LdapConnector("ad", cfg) as conn, pytest.raises(RetriableError) as err:
        conn.test_connection()
    assert err.value.error_type == "no-start-connection"


@pytest.mark.parametrize(
    ("code", "message", "error_type", "meaning"),
    [
        (
            19,
            "0000052D: AtrErr: DSID-03191083, #1:\n\t0: 0000052D: DSID-03191083, problem 1005 "
            "(CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n",
            "constraint-violation",
            "password",
        ),
        (
            68,
            "00002071: UpdErr: DSID-031B0D46, problem 6005 (ENTRY_EXISTS), data 0",
            "cd-existing-object",
            "already exists",
        ),
        (
            68,
            "00000524: UpdErr: DSID-031A11E0, problem 6005 (ENTRY_EXISTS), data 0",
            "cd-existing-object",
            "sAMAccountName",
        ),
        (
            65,
            "00002014: UpdErr: DSID-030F1125, problem 6002 (OBJ_CLASS_VIOLATION), data 0",
            "schema-violation",
            "object class",
        ),
        (
            32,
            "0000208D: NameErr: DSID-03100241, problem 2001 (NO_OBJECT), data 0, best match of:\n\t'DC=x'\n",
            "cd-missing-object",
            "does not exist",
        ),
        (
            49,
            "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 533, v4563",
            "no-start-credentials",
            "account disabled",
        ),
        (
            49,
            "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 532, v4563",
            "no-start-credentials",
            "password expired",
        ),
    ],
)
def test_ad_extended_errors_in_diagnostic_messages(
    code: int, message: str, error_type: str, meaning: str
) -> None:
    exc = LDAPOperationResult(result=code, description="ad", message=message)
    mapped = map_ad_error(exc, operation="modify", dn=ADA_DN, uri="ldaps://dc01.corp.example")
    assert mapped.error_type == error_type
    assert meaning in mapped.message
    assert "\n" not in mapped.message


def test_unknown_ad_codes_keep_the_generic_ldap_mapping() -> None:
    exc = LDAPOperationResult(result=19, description="constraintViolation", message="0000ABCD: SvcErr: odd")
    mapped = map_ad_error(exc, operation="modify", dn=ADA_DN)
    assert isinstance(mapped, DataError) and mapped.error_type == "constraint-violation"


def test_new_accounts_end_disabled_unless_the_export_enables_them() -> None:
    from connectors.ldap.ad import _AccountPlan

    def final(**attrs: list[str]) -> int:
        return _AccountPlan.of(replace(**attrs)).creation_uac()

    assert final(cn=["x"]) == 0x202, "nothing said: NORMAL_ACCOUNT | ACCOUNTDISABLE, as AD itself does"
    assert final(accountDisabled=["false"]) == 0x200
    assert final(userAccountControl=["66048"]) == 66048
    assert final(userAccountControl=["66048"], accountDisabled=["true"]) == 66050
    with pytest.raises(DataError) as err:
        _AccountPlan.of({"unicodePwd": AttrChange(op="replace", values=["pw-A1", "pw-B2"])})
    assert "pw-A1" not in err.value.message and "pw-B2" not in err.value.message


def test_delta_none_turns_ad_deltas_off(servers: list[ReplayServer]) -> None:
    servers.append(server := serve("common.yaml"))
    with connect(server, delta="none") as conn, pytest.raises(FatalError) as err:
        conn.current_watermark()
    assert err.value.error_type == "no-start-delta-disabled"
    assert server.requests == []
