"""The LDAP connector: full import by paged search, delta import and follow by RFC 4533 content
synchronization, idempotent exports, through ldap3 (SYNC strategy)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, NONE, SUBTREE, Connection, Server
from ldap3.core import results as rc
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidValueError,
    LDAPMaximumRetriesError,
    LDAPOperationResult,
    LDAPResponseTimeoutError,
    LDAPSessionTerminatedByServerError,
    LDAPSocketReceiveError,
    LDAPSocketSendError,
)
from ldap3.operation.search import compile_filter, parse_filter
from ldap3.protocol.controls import build_control
from ldap3.protocol.rfc4527 import post_read_control
from ldap3.utils.conv import escape_bytes, escape_filter_chars

from connectors.base import Checkpoint, DeltaItem, ExportOutcome, ImportedObject, ImportFailure
from connectors.ldap.dn import is_within, parent_dn, rdn_str, same_dn, split_dn
from connectors.ldap.errors import map_ldap_error
from connectors.ldap.syncrepl import (
    ConnectionLost,
    Mode,
    SyncProtocolError,
    SyncRefused,
    SyncSearch,
    SyncTimeout,
    sync_items,
    watermark_to_cookie,
)
from connectors.ldap.tls import VerifyingTls
from schemas.config import LdapConnectorConfig
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, Attrs, PendingExport

#: Prefix of values that are not UTF-8 text (see schemas.records: binary values are base64 text).
BINARY_PREFIX = "base64:"
#: Seconds to wait for one response; a paged search waits this long per page.
RECEIVE_TIMEOUT_S = 60  # int: ldap3 packs it into SO_RCVTIMEO with struct
#: Errors on a connection that was fine before: the server or a firewall dropped it; reopen once.
_STALE_CONNECTION = (LDAPSessionTerminatedByServerError, LDAPSocketReceiveError, LDAPSocketSendError)
#: Errors after which the connection's state is unknown: it is dropped.
_CONNECTION_LOST = (LDAPCommunicationError, LDAPResponseTimeoutError, LDAPMaximumRetriesError)

#: A sync search reads with this socket timeout, so follow notices its stop event within about this long.
SYNC_POLL_S = 0.5
#: Matches no entry (a zero UUID is never assigned): the search that only asks for the current cookie.
_NO_ENTRY = "(entryUUID=00000000-0000-0000-0000-000000000000)"
#: A persist search is silent while nothing changes: TCP keepalive finds a dead peer (idle, interval, count).
_KEEPALIVE = (60, 10, 3)
#: RFC 4527 post-read control: the entry as the operation left it, in the operation's response.
_POST_READ = "1.3.6.1.1.13.2"
#: RFC 4528 assertion control: the operation applies only if the entry matches a filter.
_ASSERTION = "1.3.6.1.1.12"


def _compiled_filter(text: str) -> Any:
    """An LDAP filter as the ASN.1 structure a control value carries (ldap3's own filter compiler)."""
    return compile_filter(parse_filter(text, None, True, False, None, False).elements[0])


Modifications = dict[str, list[tuple[str, list[str | bytes]]]]
log = logging.getLogger("idsync.connectors.ldap")


@dataclass(frozen=True, slots=True)
class _Entry:
    dn: str
    attributes: Attrs
    anchor: str | None


def decode_value(raw: bytes, *, binary: bool = False) -> str:
    """UTF-8 text as is; anything else as ``base64:<b64>``."""
    if not binary:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return BINARY_PREFIX + base64.b64encode(raw).decode("ascii")


def encode_value(value: str) -> str | bytes:
    """Inverse of ``decode_value``: ``base64:`` values go to the server as bytes."""
    if value.startswith(BINARY_PREFIX):
        try:
            return base64.b64decode(value[len(BINARY_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            return value  # not ours: a text value that happens to start with the prefix
    return value


def _encode_all(values: list[str]) -> list[str | bytes]:
    return [encode_value(v) for v in values]


def _get(attrs: Mapping[str, list[str]], name: str) -> list[str]:
    """Values of ``name``, matching attribute names case-insensitively as LDAP does."""
    lname = name.lower()
    for key, values in attrs.items():
        if key.lower() == lname:
            return values
    return []


def _same_values(a: list[str], b: list[str]) -> bool:
    return sorted(a) == sorted(b)


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = _KEEPALIVE
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class LdapConnector:
    """Connector, FullImport, DeltaImport, Follow, Export and ConnectionCheck.

    Imports and exports share one lazily opened ldap3 connection; each delta import or follow runs its
    sync search on a connection of its own (its responses stream in while exports go on).
    """

    def __new__(cls, name: str, config: LdapConnectorConfig) -> LdapConnector:
        # dialect: ad builds the Active Directory subclass (connectors/ldap/ad.py), wherever this is called.
        if cls is LdapConnector and getattr(config, "dialect", "openldap") == "ad":
            from connectors.ldap.ad import AdLdapConnector

            return super().__new__(AdLdapConnector)
        return super().__new__(cls)

    #: Replace-only updates go out as one asserted modify (``_replace_asserted``); cleared when the
    #: server refuses the assertion control.
    asserted_updates = True

    def __init__(self, name: str, config: LdapConnectorConfig) -> None:
        self.name = name
        self.config = config
        self._password = config.password.get_secret_value() if config.password is not None else None
        self._conn: Connection | None = None
        # ldap3 SYNC connections are not safe for concurrent use; one operation at a time.
        self._lock = threading.RLock()
        self._oc_by_type = {t: oc.lower() for t, oc in config.object_classes.items()}

    # ================================================================== connection
    def _server(self) -> Server:
        cfg = self.config
        url = urlparse(cfg.uri)
        tls: VerifyingTls | None = None
        if url.scheme == "ldaps" or cfg.start_tls:
            tls = VerifyingTls(hostname=url.hostname, verify=cfg.verify_tls, ca_file=cfg.ca_file)
        return Server(cfg.uri, tls=tls, connect_timeout=cfg.connect_timeout_s, get_info=NONE)

    def _open(self, *, starting: bool) -> Connection:
        conn: Connection | None = None
        try:
            conn = Connection(
                self._server(),  # inside the try: a bad ca_file raises here
                user=self.config.bind_dn,
                password=self._password,
                raise_exceptions=True,
                auto_referrals=False,  # never replay our credentials against another server
                auto_escape=False,  # filter values are escaped here, explicitly
                return_empty_attributes=False,
                receive_timeout=RECEIVE_TIMEOUT_S,
            )
            conn.open()
            if self.config.start_tls and not self.config.uri.startswith("ldaps://"):
                self._start_tls(conn)
            conn.bind()
        except (LDAPException, FatalError) as exc:
            if conn is not None:
                self._quiet_unbind(conn)
            if isinstance(exc, FatalError):
                raise
            raise self._error(exc, "bind", self.config.bind_dn, starting=starting) from None
        return conn

    def _start_tls(self, conn: Connection) -> None:
        try:
            started = conn.start_tls()
            reason = conn.last_error or "StartTLS did not complete"
        except LDAPOperationResult as exc:
            started, reason = False, f"{exc.description} (result {exc.result}): {exc.message}"
        # Binding after a failed StartTLS would send the password in clear: stop here instead.
        if not started:
            raise FatalError(
                f"The LDAP server {self.config.uri} refused StartTLS: {reason}", error_type="no-start-tls"
            )

    def _connection(self, *, starting: bool) -> Connection:
        if self._conn is None or self._conn.closed or not self._conn.bound:
            self._drop()
            self._conn = self._open(starting=starting)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._quiet_unbind(conn)

    @staticmethod
    def _quiet_unbind(conn: Connection) -> None:
        # The socket may be gone already: nothing left to release then.
        with contextlib.suppress(LDAPException, OSError):
            conn.unbind()
        # After a failed TLS handshake ldap3 keeps the raw socket without closing it.
        sock = getattr(conn, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _error(
        self, exc: LDAPException, operation: str, dn: str | None, *, starting: bool = False
    ) -> IdsyncError:
        return map_ldap_error(
            exc, operation=operation, dn=dn, uri=self.config.uri, starting=starting, secret=self._password
        )

    def _call(
        self,
        operation: str,
        dn: str | None,
        fn: Callable[[Connection], object],
        *,
        tolerate: frozenset[int] = frozenset(),
        starting: bool = False,
    ) -> int:
        """Run ``fn`` on the connection; returns 0, or the LDAP result code when it is in ``tolerate``.

        Any other failure is raised as an idsync error. A dropped connection is reopened once: every
        operation here is idempotent, so replaying one whose answer was lost is safe.
        """
        with self._lock:
            for attempt in range(2):
                conn = self._connection(starting=starting)
                try:
                    fn(conn)
                    return int(rc.RESULT_SUCCESS)
                except LDAPOperationResult as exc:
                    if exc.result in tolerate:
                        return int(exc.result)
                    raise self._error(exc, operation, dn, starting=starting) from None
                except _CONNECTION_LOST as exc:
                    self._drop()
                    if attempt == 0 and isinstance(exc, _STALE_CONNECTION):
                        continue
                    raise self._error(exc, operation, dn, starting=starting) from None
                except LDAPException as exc:
                    # Refused client-side (malformed DN or value): the connection itself is fine.
                    raise self._error(exc, operation, dn, starting=starting) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> LdapConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== test connection
    def test_connection(self) -> None:
        """Bind and read the base DN; raises RetriableError / FatalError with a no-start-* type."""
        base = self.config.base_dn
        # Starting: a missing base raises no-start-bad-base-dn rather than returning None.
        if self._read(base, ["1.1"], starting=True) is None:
            raise FatalError(f"The base DN {base!r} cannot be read", error_type="no-start-bad-base-dn")

    # ================================================================== reading
    def _entry(self, item: Mapping[str, Any]) -> _Entry:
        attrs: Attrs = {}
        anchor_name = self.config.anchor_attribute.lower()
        anchor: str | None = None
        for name, raw_values in item["raw_attributes"].items():
            binary = name.lower().endswith(";binary")
            values = [decode_value(bytes(v), binary=binary) for v in raw_values]
            if name.lower() == anchor_name:
                anchor = values[0] if values else None
                continue
            attrs[name] = values
        return _Entry(dn=item["dn"], attributes=attrs, anchor=anchor)

    def _read(self, dn: str, attributes: list[str] | None = None, *, starting: bool = False) -> _Entry | None:
        """The entry at ``dn`` (None when absent) with ``attributes`` (default: user ones) and the anchor."""
        attrs = [*(attributes or ["*"]), self.config.anchor_attribute]

        found: list[dict[str, Any]] = []

        def search(conn: Connection) -> None:
            conn.search(dn, "(objectClass=*)", BASE, attributes=attrs)
            found.extend(r for r in conn.response or [] if r.get("type") == "searchResEntry")

        tolerate = frozenset() if starting else frozenset({rc.RESULT_NO_SUCH_OBJECT})
        self._call("read", dn, search, tolerate=tolerate, starting=starting)
        return self._entry(found[0]) if found else None

    def _anchor_filter(self, anchor: str) -> str:
        raw = encode_value(anchor)
        value = escape_bytes(raw) if isinstance(raw, bytes) else escape_filter_chars(raw)
        return f"({self.config.anchor_attribute}={value})"

    def _find(self, anchor: str, attributes: list[str] | None = None) -> _Entry | None:
        """The entry under base_dn holding ``anchor``; DataError when two entries do."""
        attrs = [*(attributes or ["*"]), self.config.anchor_attribute]
        base = self.config.base_dn

        found: list[dict[str, Any]] = []

        def search(conn: Connection) -> None:
            try:
                conn.search(base, self._anchor_filter(anchor), SUBTREE, attributes=attrs, size_limit=2)
            except LDAPInvalidValueError:
                return  # ldap3 knows the anchor syntax (entryUUID) and this is not one: no such entry
            found.extend(r for r in conn.response or [] if r.get("type") == "searchResEntry")

        self._call("search", base, search)
        if len(found) > 1:
            raise DataError(
                f"Anchor {anchor!r} matches more than one entry under {base!r}", error_type="ambiguous-anchor"
            )
        return self._entry(found[0]) if found else None

    def _locate(self, export: PendingExport, attributes: list[str] | None = None) -> _Entry | None:
        # The anchor wins: the DN may be stale (renamed elsewhere), the anchor never is.
        if export.anchor:
            return self._find(export.anchor, attributes)
        return self._read(export.dn, attributes)

    # ================================================================== full import
    def _import_filter(self) -> str:
        classes = list(dict.fromkeys(self.config.object_classes.values()))
        parts = [f"(objectClass={escape_filter_chars(oc)})" for oc in classes]
        return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"

    def _import_attributes(self) -> list[str]:
        wanted = self.config.attributes or ["*"]
        extra = [
            a
            for a in ("objectClass", self.config.anchor_attribute)
            if a.lower() not in map(str.lower, wanted)
        ]
        return [*wanted, *extra]

    def _object_type(self, object_classes: list[str]) -> str | None:
        present = {oc.lower() for oc in object_classes}
        for object_type, oc in self._oc_by_type.items():
            if oc in present:
                return object_type
        return None

    def _imported(self, item: Mapping[str, Any]) -> ImportedObject | ImportFailure:
        dn = str(item.get("dn", "?"))
        try:
            entry = self._entry(item)
        except (KeyError, TypeError, ValueError) as exc:
            return ImportFailure(
                locator=dn, error_type="import-decode-error", message=f"Cannot decode {dn!r}: {exc}"
            )
        if not entry.anchor:
            return ImportFailure(
                locator=dn,
                error_type="import-missing-anchor",
                message=f"Entry {dn!r} has no {self.config.anchor_attribute} value to anchor it",
            )
        object_type = self._object_type(_get(entry.attributes, "objectClass"))
        if object_type is None:
            return ImportFailure(
                locator=dn,
                error_type="import-unknown-object-class",
                message=f"Entry {dn!r} has none of the configured object classes",
            )
        return ImportedObject(
            anchor=entry.anchor,
            object_type=object_type,
            attributes=entry.attributes,
            dn=entry.dn,
            locator=entry.dn,
        )

    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """Every entry of the configured object classes under base_dn, page by page."""
        base = self.config.base_dn
        pages = self._paged_search()
        started = False
        while True:
            # Lock per step, not across yields: the consumer may export between two entries.
            with self._lock:
                try:
                    item = next(pages)
                except StopIteration:
                    return
                except LDAPException as exc:
                    if isinstance(exc, _CONNECTION_LOST):
                        self._drop()
                        if not started and isinstance(exc, _STALE_CONNECTION):
                            # An idle connection the server dropped: restart once on a fresh one.
                            started = True
                            pages = self._paged_search()
                            continue
                    raise self._error(exc, "paged search", base, starting=True) from None
            started = True
            if item.get("type") == "searchResEntry":
                yield self._imported(item)

    def _paged_search(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            conn = self._connection(starting=True)
            pages: Iterator[dict[str, Any]] = conn.extend.standard.paged_search(
                self.config.base_dn,
                self._import_filter(),
                SUBTREE,
                attributes=self._import_attributes(),
                paged_size=self.config.page_size,
                generator=True,
            )
        return pages

    # ================================================================== delta import and follow (RFC 4533)
    def _require_syncrepl(self) -> None:
        if self.config.delta != "syncrepl":
            raise FatalError(
                f"Delta import is off for LDAP connector {self.name!r} (delta: none)",
                error_type="no-start-delta-disabled",
            )
        if self.config.anchor_attribute.lower() != "entryuuid":
            raise FatalError(
                f"LDAP content synchronization reports deletes by entryUUID only, but connector "
                f"{self.name!r} anchors on {self.config.anchor_attribute!r}: set anchor_attribute: entryUUID "
                f"or delta: none",
                error_type="no-start-delta-unsupported",
            )

    def current_watermark(self) -> str:
        """The server's sync cookie for now, from a refreshOnly sync search that matches no entry."""
        self._require_syncrepl()
        with contextlib.closing(
            self._sync(None, "refreshOnly", scope=BASE, search_filter=_NO_ENTRY)
        ) as items:
            for item in items:
                if isinstance(item, Checkpoint):
                    return item.watermark
        raise FatalError(
            f"The LDAP server {self.config.uri} returned no sync cookie for {self.config.base_dn!r} "
            f"(is the syncprov overlay configured on the database that holds it?)",
            error_type="no-start-delta-unsupported",
        )

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]:
        """Changes since ``watermark`` by an RFC 4533 refreshOnly search; ends with a ``Checkpoint``.

        ``None`` means "from now": only the current watermark. Raises ``CursorExpired`` when the server
        can no longer tell what was deleted since the watermark.
        """
        self._require_syncrepl()
        if watermark is None:
            yield Checkpoint(self.current_watermark())
            return
        yield from self._sync(watermark_to_cookie(watermark), "refreshOnly")

    def follow(self, watermark: str | None, stop: threading.Event) -> Iterator[DeltaItem]:
        """The delta since ``watermark``, then every change as the server pushes it (refreshAndPersist).

        Returns within about ``SYNC_POLL_S`` of ``stop`` being set. A lost connection is reopened after a
        capped exponential backoff and the search resumes from the last checkpointed cookie, so nothing
        checkpointed is yielded twice (what came after the last checkpoint may come again).
        """
        self._require_syncrepl()
        cfg = self.config
        cookie = watermark_to_cookie(watermark) if watermark is not None else None
        backoff = cfg.follow_backoff_initial_s
        while not stop.is_set():
            try:
                if cookie is None:
                    cookie = watermark_to_cookie(self.current_watermark())
                for item in self._sync(cookie, "refreshAndPersist", stop=stop):
                    if isinstance(item, Checkpoint):
                        cookie = watermark_to_cookie(item.watermark)
                        backoff = cfg.follow_backoff_initial_s  # the connection works again
                    yield item
                if stop.is_set():
                    return
                reason = "the server ended the persistent search"
            except RetriableError as exc:
                reason = exc.message
            log.warning(
                "LDAP connector %s: follow interrupted (%s); resuming in %.1f s", self.name, reason, backoff
            )
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, cfg.follow_backoff_max_s)

    def _sync(
        self,
        cookie: bytes | None,
        mode: Mode,
        *,
        stop: threading.Event | None = None,
        scope: str = SUBTREE,
        search_filter: str | None = None,
    ) -> Generator[DeltaItem, None, None]:
        """One sync search on a connection of its own, closed when the search ends or is abandoned."""
        base, uri = self.config.base_dn, self.config.uri
        conn = self._open(starting=True)
        try:
            _keepalive(conn.socket)
            try:
                search = SyncSearch(
                    conn,
                    base=base,
                    search_filter=search_filter or self._import_filter(),
                    attributes=self._import_attributes(),
                    mode=mode,
                    cookie=cookie,
                    scope=scope,
                )
            except LDAPException as exc:
                raise self._error(exc, "sync search", base, starting=True) from None
            yield from sync_items(
                search,
                cookie=cookie,
                convert=self._sync_entry,
                delete_type=next(iter(self.config.object_classes), ""),
                poll_s=SYNC_POLL_S,
                idle_timeout_s=RECEIVE_TIMEOUT_S,
                stop=stop,
            )
        except (ConnectionLost, SyncTimeout) as exc:
            raise RetriableError(
                f"LDAP sync search of {base!r} on {uri} interrupted: {exc}",
                error_type="cd-connection-failure",
            ) from None
        except SyncRefused as exc:
            raise self._sync_refused(exc) from None
        except SyncProtocolError as exc:
            raise FatalError(
                f"The LDAP server {uri} broke the content synchronization protocol: {exc}",
                error_type="sync-protocol-error",
            ) from None
        finally:
            self._quiet_unbind(conn)

    def _sync_refused(self, exc: SyncRefused) -> IdsyncError:
        base = self.config.base_dn
        if exc.result in (rc.RESULT_UNAVAILABLE_CRITICAL_EXTENSION, rc.RESULT_UNWILLING_TO_PERFORM):
            return FatalError(
                f"The LDAP server {self.config.uri} does not offer content synchronization (RFC 4533) for "
                f"{base!r}: {exc} (load the syncprov overlay on its database, see docs/connectors/ldap.md)",
                error_type="no-start-delta-unsupported",
            )
        result = LDAPOperationResult(
            result=exc.result, description=exc.description, message=exc.server_message
        )
        return self._error(result, "sync search", base, starting=True)

    def _sync_entry(self, item: dict[str, Any], entry_uuid: str) -> ImportedObject | ImportFailure:
        """A changed entry, converted as the full import converts it; the Sync State gives the anchor if
        the entry's own entryUUID is not readable."""
        raw = item.get("raw_attributes") or {}
        if not any(name.lower() == "entryuuid" for name in raw):
            item = {**item, "raw_attributes": {**raw, "entryUUID": [entry_uuid.encode("ascii")]}}
        return self._imported(item)

    # ================================================================== export
    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one pending export idempotently (see connectors.base.Export for the error contract)."""
        if export.op == "add":
            return self._apply_add(export)
        if export.op == "update":
            return self._apply_update(export)
        if export.op == "rename":
            return self._apply_rename(export)
        return self._apply_delete(export)

    # ------------------------------------------------------------------ add
    def _apply_add(self, export: PendingExport) -> ExportOutcome:
        dn = export.dn
        split_dn(dn)  # reject a malformed DN with a clear DataError before talking to the server
        attributes = {name: _encode_all(ch.values) for name, ch in export.attributes.items() if ch.values}
        actions: list[str] = []
        # The new entry's anchor comes back in the add's response (RFC 4527 post-read, not critical: a
        # server without it ignores it, and the entry is read afterwards instead).
        read_back = [post_read_control([self.config.anchor_attribute])]
        posted: dict[str, Any] = {}

        def add(conn: Connection) -> None:
            conn.add(dn, attributes=attributes, controls=read_back)
            control = ((conn.result or {}).get("controls") or {}).get(_POST_READ) or {}
            posted.update((control.get("value") or {}).get("result") or {})

        tolerate = frozenset({rc.RESULT_ENTRY_ALREADY_EXISTS, rc.RESULT_NO_SUCH_OBJECT})
        code = self._call("add", dn, add, tolerate=tolerate)
        if code == rc.RESULT_NO_SUCH_OBJECT:
            if self.config.create_parents and self._create_parents(dn):
                actions.append("created-parent")
            # Raises non-existent-parent when the parent is still missing (not creatable, or disabled).
            code = self._call("add", dn, add, tolerate=frozenset({rc.RESULT_ENTRY_ALREADY_EXISTS}))
        if code == rc.RESULT_ENTRY_ALREADY_EXISTS:
            self._convert_add(dn, export.attributes)
            actions.append("converted-add-to-update")
        anchor = self._posted_anchor(posted) if code == rc.RESULT_SUCCESS else None
        if anchor is None:
            entry = self._read(dn, ["1.1"])
            anchor = entry.anchor if entry else None
        return ExportOutcome(anchor=anchor, dn=dn, actions=tuple(actions))

    def _posted_anchor(self, attributes: Mapping[str, Any]) -> str | None:
        """The anchor in a post-read control's entry (ldap3 gives text, or bytes for binary values)."""
        name = self.config.anchor_attribute.lower()
        for attr, values in attributes.items():
            if attr.lower() == name and values:
                value = values[0]
                return value if isinstance(value, str) else decode_value(bytes(value))
        return None

    def _convert_add(self, dn: str, changes: Mapping[str, AttrChange]) -> None:
        """MIM "existing object: convert add to update": make the entry hold the add's values."""
        current = self._read(dn, list(changes) or ["1.1"])
        if current is None:
            raise DataError(
                f"Entry {dn!r} exists and vanished while converting an add", error_type="cd-missing-object"
            )
        rdn_values: dict[str, str] = {ava.attr.lower(): ava.value.casefold() for ava in split_dn(dn)[0]}
        mods: Modifications = {}
        for name, change in changes.items():
            values = change.values
            if not values:
                continue  # an add never removes: empty means "nothing to set"
            have = _get(current.attributes, name)
            if name.lower() == "objectclass":
                # Replacing objectClass would drop auxiliary classes (and fail on a structural change).
                known = {v.lower() for v in have}
                missing = [v for v in values if v.lower() not in known]
                if missing:
                    mods[name] = [(MODIFY_ADD, _encode_all(missing))]
                continue
            rdn_value = rdn_values.get(name.lower())
            if rdn_value is not None and rdn_value not in {v.casefold() for v in values}:
                continue  # would change the RDN value: that is a rename, not an update
            if not _same_values(have, values):
                mods[name] = [(MODIFY_REPLACE, _encode_all(values))]
        self._modify(dn, mods)

    def _create_parents(self, dn: str) -> bool:
        """Create the missing ``ou=`` ancestors of ``dn`` at or below base_dn, top-down; False if none."""
        base = self.config.base_dn
        missing: list[str] = []
        parent = parent_dn(dn)
        while parent is not None and is_within(parent, base) and self._read(parent, ["1.1"]) is None:
            missing.append(parent)
            parent = parent_dn(parent)
        if not missing:
            return False
        for container in missing:
            rdn = split_dn(container)[0]
            if len(rdn) != 1 or rdn[0].attr.lower() != "ou":
                raise DataError(
                    f"Cannot add {dn!r}: its parent {container!r} does not exist and only organizationalUnit "
                    f"containers are created",
                    error_type="non-existent-parent",
                )
        for container in reversed(missing):
            attrs = {"objectClass": ["top", "organizationalUnit"], "ou": [split_dn(container)[0][0].value]}
            add = functools.partial(Connection.add, dn=container, attributes=attrs)
            self._call("add", container, add, tolerate=frozenset({rc.RESULT_ENTRY_ALREADY_EXISTS}))
        return True

    # ------------------------------------------------------------------ update
    def _apply_update(self, export: PendingExport) -> ExportOutcome:
        if export.anchor and export.attributes and all(c.op == "replace" for c in export.attributes.values()):
            asserted = self._replace_asserted(export, export.anchor)
            if asserted is not None:
                return asserted
        entry = self._locate(export, list(export.attributes) or ["1.1"])
        if entry is None:
            raise self._missing(export)
        self._modify(entry.dn, self._plan(entry.attributes, export.attributes))
        return ExportOutcome(anchor=entry.anchor, dn=entry.dn)

    def _replace_asserted(self, export: PendingExport, anchor: str) -> ExportOutcome | None:
        """A replace-only update in one round trip: the modify goes to the export's DN with an RFC 4528
        assertion (critical) that the entry there holds the export's anchor, so it never changes another
        entry. A replace is idempotent as it stands: nothing to read first. None when that cannot be done —
        no entry at the DN, another entry there (renamed elsewhere), or a server without the assertion
        control (not asked again): the caller finds the entry by its anchor and plans the modify from
        what it holds."""
        if not self.asserted_updates:
            return None
        dn = export.dn
        mods: Modifications = {
            name: [(MODIFY_REPLACE, _encode_all(list(dict.fromkeys(change.values))))]
            for name, change in export.attributes.items()
        }
        controls = [build_control(_ASSERTION, True, _compiled_filter(self._anchor_filter(anchor)))]
        unavailable = rc.RESULT_UNAVAILABLE_CRITICAL_EXTENSION
        code = self._call(
            "modify",
            dn,
            lambda conn: conn.modify(dn, mods, controls=controls),
            tolerate=frozenset({rc.RESULT_NO_SUCH_OBJECT, rc.RESULT_ASSERTION_FAILED, unavailable}),
        )
        if code == unavailable:
            log.info("%s: the server refuses the assertion control; updates read the entry first", self.name)
            self.asserted_updates = False
        if code != rc.RESULT_SUCCESS:
            return None
        return ExportOutcome(anchor=anchor, dn=dn)

    def _missing(self, export: PendingExport) -> DataError:
        by = f"anchor {export.anchor!r}" if export.anchor else "DN"
        return DataError(
            f"Cannot {export.op} {export.dn!r}: no entry found by {by} under {self.config.base_dn!r}",
            error_type="cd-missing-object",
        )

    @staticmethod
    def _plan(current: Attrs, changes: Mapping[str, AttrChange]) -> Modifications:
        """The modifications that take ``current`` to the requested state; empty when already there."""
        mods: Modifications = {}
        for name, change in changes.items():
            have = _get(current, name)
            values = list(dict.fromkeys(change.values))
            if change.op == "replace":
                if not _same_values(have, values):
                    mods[name] = [(MODIFY_REPLACE, _encode_all(values))]
            elif change.op == "add":
                missing = [v for v in values if v not in have]
                if missing:
                    mods[name] = [(MODIFY_ADD, _encode_all(missing))]
            elif not values:
                if have:
                    mods[name] = [(MODIFY_DELETE, [])]
            else:
                # Case-insensitive here because most string attributes match so; the server decides.
                folded = {v.casefold() for v in have}
                present = [v for v in values if v.casefold() in folded]
                if present:
                    mods[name] = [(MODIFY_DELETE, _encode_all(present))]
        return mods

    def _modify(self, dn: str, mods: Modifications) -> None:
        """One atomic modify; if a value turns out present/absent after all, value by value, tolerantly."""
        if not mods:
            return
        benign = frozenset({rc.RESULT_ATTRIBUTE_OR_VALUE_EXISTS, rc.RESULT_NO_SUCH_ATTRIBUTE})
        code = self._call("modify", dn, lambda conn: conn.modify(dn, mods), tolerate=benign)
        if code not in benign:
            return
        # The server's matching rules saw an add value as present or a delete value as absent (case, spaces).
        for name, ops in mods.items():
            for op, values in ops:
                if op == MODIFY_REPLACE or not values:
                    single: list[list[str | bytes]] = [values]
                else:
                    single = [[v] for v in values]
                for vals in single:
                    modify = functools.partial(Connection.modify, dn=dn, changes={name: [(op, vals)]})
                    self._call("modify", dn, modify, tolerate=benign)

    # ------------------------------------------------------------------ rename
    def _apply_rename(self, export: PendingExport) -> ExportOutcome:
        new_dn = export.new_dn
        if not new_dn:
            raise DataError(f"Rename of {export.dn!r} has no new DN", error_type="rename-missing-new-dn")
        split_dn(new_dn)  # a malformed new DN is a DataError before anything moves
        actions: list[str] = []
        entry = self._locate(export, ["1.1"])
        if entry is None and not export.anchor:
            # Re-delivered rename located by DN: the old DN is gone because the first delivery moved it.
            entry = self._read(new_dn, ["1.1"])
        if entry is None:
            raise self._missing(export)
        if not same_dn(entry.dn, new_dn, case_sensitive=True):
            occupant = self._read(new_dn, ["1.1"])
            if occupant is not None and occupant.anchor != entry.anchor:
                raise DataError(
                    f"Cannot rename {entry.dn!r} to {new_dn!r}: another entry already has that DN",
                    error_type="rename-to-existing-dn",
                )
            if self._move(entry.dn, new_dn):
                actions.append("created-parent")
        if export.attributes:
            current = self._read(new_dn, list(export.attributes))
            if current is None:
                raise self._missing(export)
            self._modify(new_dn, self._plan(current.attributes, export.attributes))
        return ExportOutcome(anchor=entry.anchor, dn=new_dn, actions=tuple(actions))

    def _move(self, old_dn: str, new_dn: str) -> bool:
        """modify_dn ``old_dn`` to ``new_dn``; True when missing parent containers had to be created."""
        new_parent = parent_dn(new_dn)
        moves = new_parent is not None and not same_dn(parent_dn(old_dn) or "", new_parent)
        superior = new_parent if moves else None
        relative = rdn_str(split_dn(new_dn)[0])

        def modify_dn(conn: Connection) -> None:
            conn.modify_dn(old_dn, relative, delete_old_dn=True, new_superior=superior)

        code = self._call("rename", old_dn, modify_dn, tolerate=frozenset({rc.RESULT_NO_SUCH_OBJECT}))
        if code == rc.RESULT_SUCCESS:
            return False
        # Either the entry or the new superior is missing; only the latter can be fixed.
        created = False
        if superior is not None and self._read(superior, ["1.1"]) is None:
            if not (self.config.create_parents and self._create_parents(new_dn)):
                raise DataError(
                    f"Cannot rename {old_dn!r} to {new_dn!r}: the new parent {superior!r} does not exist",
                    error_type="non-existent-parent",
                )
            created = True
        self._call("rename", old_dn, modify_dn)  # raises cd-missing-object if the entry itself vanished
        return created

    # ------------------------------------------------------------------ delete
    def _apply_delete(self, export: PendingExport) -> ExportOutcome:
        entry = self._locate(export, ["1.1"])
        if entry is None:
            return ExportOutcome(anchor=export.anchor, dn=export.dn, actions=("already-deleted",))
        code = self._call(
            "delete",
            entry.dn,
            lambda conn: conn.delete(entry.dn),
            tolerate=frozenset({rc.RESULT_NO_SUCH_OBJECT}),
        )
        actions = ("already-deleted",) if code == rc.RESULT_NO_SUCH_OBJECT else ()
        return ExportOutcome(anchor=entry.anchor, dn=entry.dn, actions=actions)
