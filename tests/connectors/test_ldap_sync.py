"""LDAP delta import and follow (RFC 4533 content synchronization) against a real slapd with syncprov."""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3 import MODIFY_REPLACE
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import escape_rdn
from pydantic import ValidationError

from connectors import base
from connectors.base import Checkpoint, CursorExpired, DeletedObject, DeltaItem, ImportedObject, ImportFailure
from connectors.ldap import LdapConnector
from connectors.ldap.slapd import Slapd, free_port
from connectors.ldap.syncrepl import (
    SyncProtocolError,
    cookie_to_watermark,
    decode_sync_done,
    decode_sync_info,
    decode_sync_state,
    encode_sync_request,
    watermark_to_cookie,
)
from schemas.config import LdapConnectorConfig
from schemas.errors import FatalError, RetriableError
from tests.fixtures.slapd import LdapTree

pytestmark = pytest.mark.integration

#: The session log of the small slapd: a cookie older than this many writes gets a present phase.
SMALL_SESSIONLOG = 4
UUID_BYTES = bytes(range(16))
UUID_TEXT = "00010203-0405-0607-0809-0a0b0c0d0e0f"


# ---------------------------------------------------------------------------------------- helpers
def person(cn: str, **extra: list[Any]) -> dict[str, list[Any]]:
    return {"objectClass": ["inetOrgPerson"], "cn": [cn], "sn": ["S"], **extra}


def dn_in(tree: LdapTree, cn: str) -> str:
    return f"cn={escape_rdn(cn)},{tree.base_dn}"


def ldapmodify(slapd: Slapd, ldif: str, tmp_path: Path) -> None:
    """Apply LDIF with the OpenLDAP command-line client (password from a file, not the command line)."""
    secret = tmp_path / f"pw-{uuid.uuid4().hex[:6]}"
    secret.write_text(slapd.password)
    secret.chmod(0o600)
    cmd = ["ldapmodify", "-x", "-H", slapd.uri, "-D", slapd.bind_dn, "-y", str(secret)]
    subprocess.run(cmd, input=ldif.encode(), check=True, capture_output=True, timeout=10)


Change = ImportedObject | DeletedObject


def changes(items: list[DeltaItem]) -> list[Change]:
    """The items that are not checkpoints (an ImportFailure fails the test)."""
    out: list[Change] = []
    for item in items:
        assert not isinstance(item, ImportFailure), item
        if not isinstance(item, Checkpoint):
            out.append(item)
    return out


def by_anchor(items: list[DeltaItem]) -> dict[str | None, Change]:
    return {i.anchor: i for i in changes(items)}


def imported(item: object) -> ImportedObject:
    assert isinstance(item, ImportedObject), item
    return item


_END = object()


class Follower:
    """Runs ``connector.follow`` in a thread; items land in a queue with their arrival time."""

    def __init__(self, connector: LdapConnector, watermark: str | None) -> None:
        self.connector = connector
        self.stop = threading.Event()
        self.queue: queue.Queue[tuple[float, object]] = queue.Queue()
        self.error: BaseException | None = None
        self.seen: list[DeltaItem] = []
        self._thread = threading.Thread(target=self._run, args=(watermark,), daemon=True)
        self._thread.start()

    def _run(self, watermark: str | None) -> None:
        try:
            for item in self.connector.follow(watermark, self.stop):
                self.queue.put((time.monotonic(), item))
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self.queue.put((time.monotonic(), _END))

    def until(self, done: Callable[[DeltaItem], bool], timeout: float = 5.0) -> list[tuple[float, DeltaItem]]:
        """Items up to and including the first one for which ``done`` is true."""
        got: list[tuple[float, DeltaItem]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"follow did not deliver in {timeout} s; got {got}") from None
            if item is _END:
                raise AssertionError(f"follow ended early ({self.error!r}); got {got}")
            assert isinstance(item, ImportedObject | DeletedObject | Checkpoint)
            got.append((at, item))
            self.seen.append(item)
            if done(item):
                return got

    def checkpoint(self, timeout: float = 5.0) -> Checkpoint:
        last = self.until(lambda i: isinstance(i, Checkpoint), timeout)[-1][1]
        assert isinstance(last, Checkpoint)
        return last

    def close(self) -> float:
        """Set stop; returns how long the follower took to return."""
        start = time.monotonic()
        self.stop.set()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "follow did not notice stop"
        return time.monotonic() - start


@pytest.fixture
def connector(ldap_tree: LdapTree) -> Iterator[LdapConnector]:
    conn = LdapConnector("ldap", ldap_tree.config())
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def small_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A slapd with a tiny session log and a fixed port (it survives a restart at the same URI)."""
    server = Slapd(tmp_path_factory.mktemp("slapd-small"), port=free_port(), sessionlog_size=SMALL_SESSIONLOG)
    with server:
        yield server


@pytest.fixture
def small_tree(small_slapd: Slapd) -> Iterator[LdapTree]:
    base_dn = small_slapd.add_ou(f"t-{uuid.uuid4().hex[:12]}")
    conn = small_slapd.connect()
    try:
        yield LdapTree(slapd=small_slapd, base_dn=base_dn, conn=conn)
    finally:
        with contextlib.suppress(LDAPException, OSError):  # the test may have restarted slapd under it
            conn.unbind()
        small_slapd.start()
        small_slapd.delete_subtree(base_dn)


# ---------------------------------------------------------------------------------------- protocol pieces
def test_sync_request_control_encoding() -> None:
    # SEQUENCE { ENUMERATED refreshOnly(1), OCTET STRING "abc" }; reloadHint FALSE is the default, omitted.
    assert encode_sync_request("refreshOnly", b"abc") == bytes.fromhex("3008 0a0101 0403616263")
    assert encode_sync_request("refreshAndPersist") == bytes.fromhex("3003 0a0103")
    assert encode_sync_request("refreshOnly", reload_hint=True) == bytes.fromhex("3006 0a0101 0101ff")


def test_sync_state_done_and_info_decoding() -> None:
    state = decode_sync_state(bytes.fromhex("3018 0a0103 0410") + UUID_BYTES + bytes.fromhex("0401") + b"c")
    assert (state.state, state.entry_uuid, state.cookie) == ("delete", UUID_TEXT, b"c")
    assert decode_sync_done(None).refresh_deletes is False
    done = decode_sync_done(bytes.fromhex("3008 0403616263 0101ff"))
    assert (done.cookie, done.refresh_deletes) == (b"abc", True)

    assert decode_sync_info(bytes.fromhex("8003616263")).cookie == b"abc"
    info = decode_sync_info(bytes.fromhex("a103 010100"))  # refreshDelete, refreshDone FALSE
    assert (info.kind, info.cookie, info.refresh_done) == ("refreshDelete", None, False)
    assert decode_sync_info(bytes.fromhex("a200")).kind == "refreshPresent"
    id_set = decode_sync_info(bytes.fromhex("a317 0101ff 3112 0410") + UUID_BYTES)
    assert (id_set.kind, id_set.refresh_deletes, id_set.uuids) == ("syncIdSet", True, (UUID_TEXT,))
    with pytest.raises(SyncProtocolError):
        decode_sync_info(b"\x04\x01x")
    with pytest.raises(SyncProtocolError):
        decode_sync_state(bytes.fromhex("3008 0a0101 0403616263"))  # a 3-octet "UUID"


def test_watermarks_are_the_cookie_text_and_refuse_anything_else() -> None:
    cookie = b"rid=000,csn=20240101000000.000000Z#000000#000#000000"
    assert cookie_to_watermark(cookie) == cookie.decode()
    assert watermark_to_cookie(cookie.decode()) == cookie
    odd = b"\xffrid=000,csn=x"
    assert watermark_to_cookie(cookie_to_watermark(odd)) == odd
    for bad in ("", "hello", "base64:!!", "42"):
        with pytest.raises(CursorExpired):
            watermark_to_cookie(bad)


def test_config_defaults_and_backoff_validation(ldap_tree: LdapTree) -> None:
    config = ldap_tree.config()
    assert config.delta == "syncrepl"
    assert config.follow_backoff_initial_s <= config.follow_backoff_max_s
    with pytest.raises(ValidationError, match="follow_backoff_max_s"):
        ldap_tree.config(follow_backoff_initial_s=5, follow_backoff_max_s=1)
    with pytest.raises(ValidationError):
        ldap_tree.config(delta="accesslog")


def test_implements_delta_import_and_follow(connector: LdapConnector) -> None:
    assert isinstance(connector, base.DeltaImport)
    assert isinstance(connector, base.Follow)


# ---------------------------------------------------------------------------------------- delta import
def test_delta_sees_add_modify_rename_delete_made_with_ldap3(
    ldap_tree: LdapTree, connector: LdapConnector
) -> None:
    keep = ldap_tree.add(dn_in(ldap_tree, "Keep"), person("Keep"))
    mod = ldap_tree.add(dn_in(ldap_tree, "Mod"), person("Mod"))
    ren = ldap_tree.add(dn_in(ldap_tree, "Ren"), person("Ren"))
    gone = ldap_tree.add(dn_in(ldap_tree, "Gone"), person("Gone"))
    mark = connector.current_watermark()

    ldap_tree.conn.add(dn_in(ldap_tree, "New"), attributes=person("New", jpegPhoto=[b"\xff\xd8\xff"]))
    new_entry = ldap_tree.read(dn_in(ldap_tree, "New"), ["entryUUID"])
    assert new_entry is not None
    new = new_entry["entryUUID"][0]
    ldap_tree.conn.modify(dn_in(ldap_tree, "Mod"), {"title": [(MODIFY_REPLACE, ["Boss"])]})
    ldap_tree.conn.modify_dn(dn_in(ldap_tree, "Ren"), "cn=Renamed")
    ldap_tree.conn.delete(dn_in(ldap_tree, "Gone"))

    items = list(connector.delta_import(mark))
    assert isinstance(items[-1], Checkpoint) and items[-1].watermark != mark
    seen = by_anchor(items)
    assert set(seen) == {new, mod, ren, gone}, "exactly the changed entries; unchanged ones stay out"
    assert keep not in seen
    assert imported(seen[mod]).attributes["title"] == ["Boss"]
    renamed = seen[ren]
    assert isinstance(renamed, ImportedObject) and renamed.dn == dn_in(ldap_tree, "Renamed")
    assert renamed.attributes["cn"] == ["Renamed"]
    deleted = seen[gone]
    assert isinstance(deleted, DeletedObject) and deleted.object_type == "person"
    # The same conversion as the full import: same attributes, binary values as base64, anchor kept apart.
    full = {o.anchor: o for o in connector.full_import() if isinstance(o, ImportedObject)}
    added = seen[new]
    assert isinstance(added, ImportedObject)
    assert added == full[new]
    assert added.attributes["jpegPhoto"] == ["base64:/9j/"] and "entryUUID" not in added.attributes

    again = list(connector.delta_import(items[-1].watermark))
    assert again == [Checkpoint(items[-1].watermark)], "a delta from the last checkpoint sees nothing new"


def test_delta_sees_changes_made_with_ldapmodify(
    ldap_tree: LdapTree, connector: LdapConnector, tmp_path: Path
) -> None:
    mod = ldap_tree.add(dn_in(ldap_tree, "Cli Mod"), person("Cli Mod"))
    ren = ldap_tree.add(dn_in(ldap_tree, "Cli Ren"), person("Cli Ren"))
    gone = ldap_tree.add(dn_in(ldap_tree, "Cli Gone"), person("Cli Gone"))
    mark = connector.current_watermark()
    t = ldap_tree.base_dn
    ldapmodify(
        ldap_tree.slapd,
        f"dn: cn=Cli New,{t}\nchangetype: add\nobjectClass: inetOrgPerson\ncn: Cli New\nsn: S\n\n"
        f"dn: cn=Cli Mod,{t}\nchangetype: modify\nreplace: title\ntitle: Changed by CLI\n\n"
        f"dn: cn=Cli Ren,{t}\nchangetype: modrdn\nnewrdn: cn=Cli Renamed\ndeleteoldrdn: 1\n\n"
        f"dn: cn=Cli Gone,{t}\nchangetype: delete\n",
        tmp_path,
    )
    items = list(connector.delta_import(mark))
    assert isinstance(items[-1], Checkpoint)
    seen = by_anchor(items)
    new = ldap_tree.read(f"cn=Cli New,{t}")
    assert new is not None
    assert set(seen) == {new["entryUUID"][0], mod, ren, gone}
    assert imported(seen[mod]).attributes["title"] == ["Changed by CLI"]
    assert imported(seen[ren]).dn == f"cn=Cli Renamed,{t}"
    assert isinstance(seen[gone], DeletedObject)
    assert changes(list(connector.delta_import(items[-1].watermark))) == []


def test_delta_keeps_to_base_dn_and_object_classes(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    sibling = ldap_tree.slapd.add_ou(f"s-{uuid.uuid4().hex[:12]}")
    try:
        mark = connector.current_watermark()
        ldap_tree.conn.add(f"cn=Elsewhere,{sibling}", attributes=person("Elsewhere"))
        ldap_tree.slapd.add_ou("not-a-person", ldap_tree.base_dn)
        inside = ldap_tree.add(dn_in(ldap_tree, "Inside"), person("Inside"))
        items = list(connector.delta_import(mark))
        assert [i.anchor for i in changes(items)] == [inside]
    finally:
        ldap_tree.slapd.delete_subtree(sibling)


def test_delta_from_none_starts_now(ldap_tree: LdapTree, connector: LdapConnector) -> None:
    ldap_tree.add(dn_in(ldap_tree, "Before"), person("Before"))
    items = list(connector.delta_import(None))
    assert len(items) == 1 and isinstance(items[0], Checkpoint)
    after = ldap_tree.add(dn_in(ldap_tree, "After"), person("After"))
    assert [i.anchor for i in changes(list(connector.delta_import(items[0].watermark)))] == [after]


# ---------------------------------------------------------------------------------------- expired cursors
@pytest.mark.parametrize(
    "cookie",
    [
        "rid=000,csn=20000101000000.000000Z#000000#000#000000",  # older than anything: stale
        "rid=000,csn=29991231000000.000000Z#000000#000#000000",  # newer than the server: a restored backup
        "rid=000,csn=20000101000000.000000Z#000000#005#000000",  # a server id this slapd does not know
        "not a cookie",
    ],
)
def test_unusable_cookie_raises_cursor_expired(
    ldap_tree: LdapTree, connector: LdapConnector, cookie: str
) -> None:
    ldap_tree.add(dn_in(ldap_tree, "Someone"), person("Someone"))
    with pytest.raises(CursorExpired) as err:
        list(connector.delta_import(cookie))
    assert err.value.error_type == "cursor-expired"
    assert ldap_tree.slapd.password not in str(err.value)


def test_cookie_beyond_the_session_log_raises_cursor_expired_and_recovers(small_tree: LdapTree) -> None:
    dns = [dn_in(small_tree, f"P{i}") for i in range(SMALL_SESSIONLOG + 2)]
    for dn in dns:
        small_tree.add(dn, person(dn.split(",")[0][3:]))
    with LdapConnector("ldap", small_tree.config()) as conn:
        mark = conn.current_watermark()
        # Within the session log: deletes are known, the delta works.
        small_tree.conn.modify(dns[0], {"title": [(MODIFY_REPLACE, ["one"])]})
        assert len(changes(list(conn.delta_import(mark)))) == 1
        for dn in dns:  # more writes than the session log remembers
            small_tree.conn.modify(dn, {"title": [(MODIFY_REPLACE, ["many"])]})
        with pytest.raises(CursorExpired, match="full import"):
            list(conn.delta_import(mark))
        stop = threading.Event()
        with pytest.raises(CursorExpired):
            list(conn.follow(mark, stop))
        # What the runtime does next: a watermark taken before its full import, deltas from there.
        fresh = conn.current_watermark()
        small_tree.conn.delete(dns[1])
        (deleted,) = changes(list(conn.delta_import(fresh)))
        assert isinstance(deleted, DeletedObject)


# ---------------------------------------------------------------------------------------- follow
def test_follow_pushes_an_ldapmodify_change_within_a_second(
    ldap_tree: LdapTree, connector: LdapConnector, tmp_path: Path
) -> None:
    anchor = ldap_tree.add(dn_in(ldap_tree, "Pushed"), person("Pushed"))
    follower = Follower(connector, connector.current_watermark())
    try:
        refreshed = follower.until(lambda i: isinstance(i, Checkpoint))
        assert [i for _, i in refreshed if not isinstance(i, Checkpoint)] == []
        start = time.monotonic()
        ldapmodify(
            ldap_tree.slapd,
            f"dn: {dn_in(ldap_tree, 'Pushed')}\nchangetype: modify\nreplace: title\ntitle: pushed\n",
            tmp_path,
        )
        written = time.monotonic()
        got = follower.until(lambda i: isinstance(i, ImportedObject))
        arrived, item = got[-1]
        assert isinstance(item, ImportedObject) and item.anchor == anchor
        assert item.attributes["title"] == ["pushed"]
        print(
            f"\nfollow latency: {(arrived - start) * 1000:.1f} ms from starting ldapmodify "
            f"(which itself took {(written - start) * 1000:.1f} ms to run)"
        )
        assert arrived - start < 1.0
        assert isinstance(follower.checkpoint(), Checkpoint), "a pushed change is followed by its cookie"
    finally:
        took = follower.close()
    assert follower.error is None
    print(f"follow noticed stop in {took * 1000:.0f} ms")
    assert took < 1.5


def test_follow_resumes_from_its_checkpoint_missing_nothing_repeating_nothing(
    ldap_tree: LdapTree, connector: LdapConnector, tmp_path: Path
) -> None:
    a = ldap_tree.add(dn_in(ldap_tree, "A"), person("A"))
    b = ldap_tree.add(dn_in(ldap_tree, "B"), person("B"))
    c = ldap_tree.add(dn_in(ldap_tree, "C"), person("C"))
    e = ldap_tree.add(dn_in(ldap_tree, "E"), person("E"))
    first = Follower(connector, connector.current_watermark())
    try:
        first.checkpoint()  # the refresh is done
        ldap_tree.conn.modify(dn_in(ldap_tree, "A"), {"title": [(MODIFY_REPLACE, ["first"])]})
        pushed = changes([i for _, i in first.until(lambda i: isinstance(i, ImportedObject))])
        assert [i.anchor for i in pushed] == [a]
        last = first.checkpoint()
    finally:
        first.close()

    # While nobody follows: changes by ldap3 and by the command-line tool.
    ldap_tree.conn.modify(dn_in(ldap_tree, "B"), {"title": [(MODIFY_REPLACE, ["offline"])]})
    ldap_tree.conn.modify_dn(dn_in(ldap_tree, "E"), "cn=E2")
    t = ldap_tree.base_dn
    ldapmodify(
        ldap_tree.slapd,
        f"dn: cn=C,{t}\nchangetype: delete\n\ndn: cn=D,{t}\nchangetype: add\nobjectClass: inetOrgPerson\n"
        f"cn: D\nsn: S\n",
        tmp_path,
    )
    d_entry = ldap_tree.read(f"cn=D,{t}")
    assert d_entry is not None
    d = d_entry["entryUUID"][0]

    second = Follower(connector, last.watermark)
    try:
        caught_up = [i for _, i in second.until(lambda i: isinstance(i, Checkpoint))]
        seen = by_anchor(caught_up)
        assert set(seen) == {b, c, d, e}, "every offline change, and nothing checkpointed before"
        assert len(changes(caught_up)) == 4
        assert isinstance(seen[c], DeletedObject)
        assert imported(seen[e]).dn == f"cn=E2,{t}"
        assert imported(seen[b]).attributes["title"] == ["offline"]
        # And it goes on following.
        ldap_tree.conn.delete(f"cn=D,{t}")
        (_, deleted), *_ = second.until(lambda i: isinstance(i, DeletedObject))
        assert isinstance(deleted, DeletedObject) and deleted.anchor == d and deleted.dn == f"cn=D,{t}"
    finally:
        second.close()
    assert first.error is None and second.error is None


def test_follow_reconnects_after_a_slapd_restart(small_tree: LdapTree) -> None:
    slapd = small_tree.slapd
    anchor = small_tree.add(dn_in(small_tree, "Survivor"), person("Survivor"))
    config = small_tree.config(follow_backoff_initial_s=0.1, follow_backoff_max_s=0.4)
    with LdapConnector("ldap", config) as conn:
        follower = Follower(conn, conn.current_watermark())
        try:
            follower.checkpoint()
            slapd.stop()
            time.sleep(0.6)  # the follower notices and retries a few times against a closed port
            slapd.start()
            admin = slapd.connect()
            try:
                admin.modify(dn_in(small_tree, "Survivor"), {"title": [(MODIFY_REPLACE, ["after restart"])]})
            finally:
                admin.unbind()
            got = [i for _, i in follower.until(lambda i: isinstance(i, ImportedObject), timeout=10)]
            assert [i.anchor for i in changes(got)] == [anchor], "nothing from before the restart again"
            obj = got[-1]
            assert isinstance(obj, ImportedObject) and obj.attributes["title"] == ["after restart"]
        finally:
            follower.close()
        assert follower.error is None


def test_memory_session_log_forgets_unseen_writes_on_restart(small_tree: LdapTree) -> None:
    slapd = small_tree.slapd
    small_tree.add(dn_in(small_tree, "Before"), person("Before"))
    with LdapConnector("ldap", small_tree.config()) as conn:
        mark = conn.current_watermark()
        small_tree.conn.modify(dn_in(small_tree, "Before"), {"title": [(MODIFY_REPLACE, ["unseen"])]})
        slapd.stop()
        slapd.start()
        with pytest.raises(CursorExpired):
            list(conn.delta_import(mark))


def test_accesslog_session_log_survives_a_restart(tmp_path: Path) -> None:
    with Slapd(tmp_path / "slapd", port=free_port(), sessionlog_source="accesslog") as server:
        config = LdapConnectorConfig(
            kind="ldap",
            uri=server.uri,
            bind_dn=server.bind_dn,
            password=server.password,
            base_dn=server.people_dn,
        )
        admin = server.connect()
        try:
            admin.add(f"cn=Mod,{server.people_dn}", attributes=person("Mod"))
            admin.add(f"cn=Gone,{server.people_dn}", attributes=person("Gone"))
            with LdapConnector("ldap", config) as conn:
                mark = conn.current_watermark()
                admin.modify(f"cn=Mod,{server.people_dn}", {"title": [(MODIFY_REPLACE, ["unseen"])]})
                admin.delete(f"cn=Gone,{server.people_dn}")
                admin.unbind()
                server.stop()
                server.start()
                admin = server.connect()
                admin.add(f"cn=New,{server.people_dn}", attributes=person("New"))
                items = changes(list(conn.delta_import(mark)))
        finally:
            admin.unbind()
    assert sorted(type(i).__name__ for i in items) == ["DeletedObject", "ImportedObject", "ImportedObject"]
    assert {i.dn for i in items if isinstance(i, ImportedObject)} == {
        f"cn=Mod,{server.people_dn}",
        f"cn=New,{server.people_dn}",
    }


def test_follow_notices_stop_while_the_server_is_down(ldap_tree: LdapTree) -> None:
    config = ldap_tree.config(uri=f"ldap://127.0.0.1:{free_port()}", follow_backoff_initial_s=30)
    with LdapConnector("ldap", config) as conn:
        follower = Follower(conn, "rid=000,csn=20240101000000.000000Z#000000#000#000000")
        time.sleep(0.3)  # first attempt refused, now in a long backoff
        assert follower.close() < 1.0
        assert follower.error is None and follower.seen == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_delta_and_follow_over_start_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, "-keyout", str(key), "-out", str(cert), *subject],
        check=True,
        capture_output=True,
    )
    tls = f"TLSCertificateFile {cert}\nTLSCertificateKeyFile {key}"
    with Slapd(tmp_path / "slapd", global_config=tls) as server:
        config = LdapConnectorConfig(
            kind="ldap",
            uri=server.uri,
            bind_dn=server.bind_dn,
            password=server.password,
            base_dn=server.people_dn,
            start_tls=True,
            ca_file=cert,
        )
        dn = f"cn=Secure,{server.people_dn}"
        admin = server.connect()
        try:
            with LdapConnector("ldap", config) as conn:
                mark = conn.current_watermark()
                admin.add(dn, attributes=person("Secure"))
                (added,) = changes(list(conn.delta_import(mark)))
                assert isinstance(added, ImportedObject) and added.dn == dn
                follower = Follower(conn, mark)
                try:
                    refreshed = [i for _, i in follower.until(lambda i: isinstance(i, Checkpoint))]
                    assert [i.anchor for i in changes(refreshed)] == [added.anchor]
                    admin.delete(dn)
                    (_, gone), *_ = follower.until(lambda i: isinstance(i, DeletedObject))
                    assert isinstance(gone, DeletedObject) and gone.anchor == added.anchor
                finally:
                    follower.close()
                assert follower.error is None
        finally:
            admin.unbind()


# ---------------------------------------------------------------------------------------- errors
def test_delta_off_or_unusable_anchor_is_fatal(ldap_tree: LdapTree) -> None:
    with LdapConnector("ldap", ldap_tree.config(delta="none")) as conn:
        for call in (conn.current_watermark, lambda: list(conn.delta_import(None))):
            with pytest.raises(FatalError) as err:
                call()
            assert err.value.error_type == "no-start-delta-disabled"
        with pytest.raises(FatalError):
            list(conn.follow(None, threading.Event()))
    with LdapConnector("ldap", ldap_tree.config(anchor_attribute="mail")) as conn:
        with pytest.raises(FatalError) as err:
            conn.current_watermark()
        assert err.value.error_type == "no-start-delta-unsupported" and "entryUUID" in str(err.value)


def test_server_without_syncprov_is_a_clear_fatal_error(tmp_path: Path) -> None:
    with Slapd(tmp_path / "plain", syncprov=False) as plain:
        config = LdapConnectorConfig(
            kind="ldap",
            uri=plain.uri,
            bind_dn=plain.bind_dn,
            password=plain.password,
            base_dn=plain.people_dn,
        )
        with LdapConnector("ldap", config) as conn, pytest.raises(FatalError) as err:
            conn.current_watermark()
    assert err.value.error_type == "no-start-delta-unsupported"
    assert "syncprov" in str(err.value) and plain.password not in str(err.value)
    assert "Traceback" not in str(err.value)


def test_connection_errors_of_delta_and_follow(ldap_tree: LdapTree) -> None:
    mark = "rid=000,csn=20240101000000.000000Z#000000#000#000000"
    down = ldap_tree.config(uri=f"ldap://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    with LdapConnector("ldap", down) as conn, pytest.raises(RetriableError) as retriable:
        list(conn.delta_import(mark))
    assert retriable.value.error_type == "no-start-connection"

    secret = "wrong-secret-4711"
    with LdapConnector("ldap", ldap_tree.config(password=secret)) as conn:
        with pytest.raises(FatalError) as fatal:
            list(conn.delta_import(mark))
        assert fatal.value.error_type == "no-start-credentials"
        # Follow retries what is retriable, never refused credentials.
        with pytest.raises(FatalError):
            list(conn.follow(mark, threading.Event()))
    assert secret not in str(fatal.value) and ldap_tree.slapd.password not in str(fatal.value)

    missing = ldap_tree.config(base_dn=f"ou=nowhere,{ldap_tree.base_dn}")
    with LdapConnector("ldap", missing) as conn, pytest.raises(FatalError) as bad_base:
        conn.current_watermark()
    assert bad_base.value.error_type == "no-start-bad-base-dn"
