"""RFC 4533 (LDAP Content Synchronization) on top of an ldap3 connection.

ldap3 has no syncrepl support, so this module holds the protocol pieces: the Sync Request control
(encoded with pyasn1, which ldap3 depends on), the decoding of the Sync State and Sync Done controls and
of the Sync Info intermediate message, and :class:`SyncSearch`, which sends one sync search on a bound
ldap3 connection and reads its response stream straight from the socket with a short timeout, so a
refreshAndPersist search (which never ends) can still notice a stop request about every ``poll_s``.

:func:`sync_items` turns those protocol events into the connector SDK's delta items (the caller converts
entries, as the full import does); the connector (``connectors.ldap.connector``) opens connections, maps
errors and reconnects.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ldap3 import DEREF_NEVER, SUBTREE, Connection
from ldap3.operation.search import search_operation
from ldap3.strategy.base import BaseStrategy
from ldap3.utils.asn1 import decode_message_fast
from pyasn1.codec.ber import decoder
from pyasn1.codec.der import encoder  # RFC 4511 5.1: TRUE is 0xFF, definite lengths: DER does both
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, namedval, tag, univ

from connectors.base import Checkpoint, CursorExpired, DeletedObject, DeltaItem, ImportedObject, ImportFailure

#: The Sync Request control (attached to the search request).
SYNC_REQUEST_OID = "1.3.6.1.4.1.4203.1.9.1.1"
#: The Sync State control (attached to each entry of the search).
SYNC_STATE_OID = "1.3.6.1.4.1.4203.1.9.1.2"
#: The Sync Done control (attached to the searchResultDone).
SYNC_DONE_OID = "1.3.6.1.4.1.4203.1.9.1.3"
#: The Sync Info message (an intermediate response).
SYNC_INFO_OID = "1.3.6.1.4.1.4203.1.9.1.4"
#: Result code e-syncRefreshRequired: the cookie is too old, the client must reload everything.
E_SYNC_REFRESH_REQUIRED = 4096
#: Notice of Disconnection (RFC 4511 4.4.1), unsolicited: the server is closing the connection.
NOTICE_OF_DISCONNECTION_OID = "1.3.6.1.4.1.1466.20036"

Mode = Literal["refreshOnly", "refreshAndPersist"]
State = Literal["present", "add", "modify", "delete"]


# ====================================================================== ASN.1 (RFC 4533 section 2)
class _SyncRequestValue(univ.Sequence):  # type: ignore[misc]  # pyasn1 is untyped
    """syncRequestValue ::= SEQUENCE { mode ENUMERATED, cookie syncCookie OPTIONAL, reloadHint BOOLEAN
    DEFAULT FALSE }"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "mode",
            univ.Enumerated(namedValues=namedval.NamedValues(("refreshOnly", 1), ("refreshAndPersist", 3))),
        ),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("reloadHint", univ.Boolean(False)),
    )


class _SyncStateValue(univ.Sequence):  # type: ignore[misc]
    """syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID syncUUID, cookie syncCookie OPTIONAL }"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "state",
            univ.Enumerated(
                namedValues=namedval.NamedValues(("present", 0), ("add", 1), ("modify", 2), ("delete", 3))
            ),
        ),
        namedtype.NamedType("entryUUID", univ.OctetString()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
    )


class _SyncDoneValue(univ.Sequence):  # type: ignore[misc]
    """syncDoneValue ::= SEQUENCE { cookie syncCookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE }"""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)),
    )


def _context(number: int, *, constructed: bool) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


class _RefreshPhase(univ.Sequence):  # type: ignore[misc]
    """refreshDelete / refreshPresent ::= SEQUENCE { cookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE }"""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDone", univ.Boolean(True)),
    )


class _SyncIdSet(univ.Sequence):  # type: ignore[misc]
    """syncIdSet ::= SEQUENCE { cookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE, syncUUIDs SET OF }"""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)),
        namedtype.NamedType("syncUUIDs", univ.SetOf(componentType=univ.OctetString())),
    )


class _SyncInfoValue(univ.Choice):  # type: ignore[misc]
    """syncInfoValue ::= CHOICE { newcookie [0], refreshDelete [1], refreshPresent [2], syncIdSet [3] }
    (the LDAP module uses IMPLICIT tags)."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "newcookie", univ.OctetString().subtype(implicitTag=_context(0, constructed=False))
        ),
        namedtype.NamedType(
            "refreshDelete", _RefreshPhase().subtype(implicitTag=_context(1, constructed=True))
        ),
        namedtype.NamedType(
            "refreshPresent", _RefreshPhase().subtype(implicitTag=_context(2, constructed=True))
        ),
        namedtype.NamedType("syncIdSet", _SyncIdSet().subtype(implicitTag=_context(3, constructed=True))),
    )


class SyncProtocolError(ValueError):
    """A sync control or message that does not decode as RFC 4533 says it must."""


def encode_sync_request(mode: Mode, cookie: bytes | None = None, *, reload_hint: bool = False) -> bytes:
    """The BER value of a Sync Request control."""
    value = _SyncRequestValue()
    value["mode"] = mode
    if cookie is not None:
        value["cookie"] = cookie
    if reload_hint:
        value["reloadHint"] = True
    return bytes(encoder.encode(value))


def sync_request_control(
    mode: Mode, cookie: bytes | None = None, *, reload_hint: bool = False
) -> tuple[str, bool, bytes]:
    """The Sync Request control as ldap3 takes controls: ``(oid, criticality, value)``, critical."""
    return SYNC_REQUEST_OID, True, encode_sync_request(mode, cookie, reload_hint=reload_hint)


def format_uuid(raw: bytes) -> str:
    """A 16-octet syncUUID in the text form slapd uses for the entryUUID attribute."""
    if len(raw) != 16:
        raise SyncProtocolError(f"a syncUUID has 16 octets, not {len(raw)}")
    return str(uuid.UUID(bytes=raw))


def _decode(spec: Any, value: bytes, what: str) -> Any:
    try:
        decoded, rest = decoder.decode(value, asn1Spec=spec)
    except PyAsn1Error as exc:
        raise SyncProtocolError(f"undecodable {what}: {exc}") from None
    if rest:
        raise SyncProtocolError(f"trailing octets after the {what}")
    return decoded


def _optional_cookie(value: Any) -> bytes | None:
    cookie = value["cookie"]
    return bytes(cookie) if cookie.isValue else None


@dataclass(frozen=True, slots=True)
class SyncState:
    """The Sync State control of one entry: what happened to it, its entryUUID and maybe a new cookie."""

    state: State
    entry_uuid: str
    cookie: bytes | None = None


@dataclass(frozen=True, slots=True)
class SyncDone:
    """The Sync Done control of a refreshOnly search's end: the new cookie and which phase it used."""

    cookie: bytes | None = None
    refresh_deletes: bool = False


@dataclass(frozen=True, slots=True)
class SyncInfo:
    """A Sync Info message. ``kind`` is the CHOICE taken; ``uuids`` only for syncIdSet."""

    kind: Literal["newcookie", "refreshDelete", "refreshPresent", "syncIdSet"]
    cookie: bytes | None = None
    refresh_done: bool = True
    refresh_deletes: bool = False
    uuids: tuple[str, ...] = field(default=())


def decode_sync_state(value: bytes) -> SyncState:
    decoded = _decode(_SyncStateValue(), value, "Sync State control")
    state = str(decoded["state"].prettyPrint())
    if state not in ("present", "add", "modify", "delete"):
        raise SyncProtocolError(f"unknown sync state {state!r}")
    return SyncState(
        state=state,  # type: ignore[arg-type]  # checked just above
        entry_uuid=format_uuid(bytes(decoded["entryUUID"])),
        cookie=_optional_cookie(decoded),
    )


def decode_sync_done(value: bytes | None) -> SyncDone:
    if not value:  # every component is optional or defaulted: an absent value is all defaults
        return SyncDone()
    decoded = _decode(_SyncDoneValue(), value, "Sync Done control")
    return SyncDone(cookie=_optional_cookie(decoded), refresh_deletes=bool(decoded["refreshDeletes"]))


def decode_sync_info(value: bytes) -> SyncInfo:
    decoded = _decode(_SyncInfoValue(), value, "Sync Info message")
    kind = decoded.getName()
    body = decoded.getComponent()
    if kind == "newcookie":
        return SyncInfo(kind="newcookie", cookie=bytes(body))
    if kind in ("refreshDelete", "refreshPresent"):
        return SyncInfo(kind=kind, cookie=_optional_cookie(body), refresh_done=bool(body["refreshDone"]))
    if kind == "syncIdSet":
        return SyncInfo(
            kind="syncIdSet",
            cookie=_optional_cookie(body),
            refresh_deletes=bool(body["refreshDeletes"]),
            uuids=tuple(format_uuid(bytes(u)) for u in body["syncUUIDs"]),
        )
    raise SyncProtocolError(f"unknown Sync Info choice {kind!r}")


# ====================================================================== the search and its stream
@dataclass(frozen=True, slots=True)
class EntryEvent:
    """A searchResultEntry with its Sync State (``item`` has ldap3's shape: dn, raw_attributes)."""

    sync: SyncState
    item: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InfoEvent:
    info: SyncInfo


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """The searchResultDone: the result code, and the Sync Done control when the result is a success."""

    result: int
    description: str
    message: str
    done: SyncDone


SyncEvent = EntryEvent | InfoEvent | DoneEvent


class ConnectionLost(Exception):
    """The server closed the connection (EOF, reset, Notice of Disconnection) during a sync search."""


class SyncSearch:
    """One RFC 4533 sync search on a bound ldap3 connection that is used for nothing else meanwhile.

    ldap3's synchronous strategy waits for the searchResultDone, which a refreshAndPersist search never
    sends; so the request goes out through ldap3 (same encoder, same message ids) and the responses are
    read here, from the socket, with ``poll_s`` as the socket timeout.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        base: str,
        search_filter: str,
        attributes: list[str],
        mode: Mode,
        cookie: bytes | None,
        scope: str = SUBTREE,
    ) -> None:
        self._conn = conn
        request = search_operation(
            base,
            search_filter,
            scope,
            DEREF_NEVER,
            attributes,
            0,  # no size limit
            0,  # no time limit: a persist search lives until stopped
            False,
            False,  # auto_escape: the caller built the filter with escaped values
            False,
        )
        controls = [sync_request_control(mode, cookie)]
        self.message_id: int = conn.send("searchRequest", request, controls)
        # ldap3 remembers outstanding requests for its own reader; this one is read here.
        conn.strategy._outstanding.pop(self.message_id, None)
        self._buffer = bytearray()
        self._strategy: BaseStrategy = conn.strategy

    def events(self, poll_s: float) -> Iterator[SyncEvent | None]:
        """The search's events as they arrive; ``None`` after each ``poll_s`` without a complete message.

        Ends after the DoneEvent. Raises ConnectionLost when the connection goes away, SyncProtocolError
        on an undecodable message.
        """
        sock = self._conn.socket
        if sock is None:
            raise ConnectionLost("the connection is closed")
        sock.settimeout(poll_s)
        while True:
            message = self._next_message()
            if message is None:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    yield None
                    continue
                except OSError as exc:
                    raise ConnectionLost(f"receive failed: {exc}") from None
                if not data:
                    raise ConnectionLost("the server closed the connection")
                self._buffer += data
                continue
            event = self._event(message)
            if event is not None:
                yield event
                if isinstance(event, DoneEvent):
                    return

    def _next_message(self) -> bytes | None:
        size = BaseStrategy.compute_ldap_message_size(self._buffer)
        if size == -1 or len(self._buffer) < size:
            return None
        message = bytes(self._buffer[:size])
        del self._buffer[:size]
        return message

    def _event(self, raw: bytes) -> SyncEvent | None:
        try:
            message = decode_message_fast(raw)
            response = self._strategy.decode_response_fast(message)
        except Exception as exc:  # ldap3's fast decoder raises anything from IndexError to KeyError
            raise SyncProtocolError(f"undecodable LDAP message: {type(exc).__name__}: {exc}") from None
        message_id = int(message["messageID"])
        kind = response.get("type")
        if message_id == 0:
            if response.get("responseName") == NOTICE_OF_DISCONNECTION_OID:
                raise ConnectionLost(
                    f"the server disconnects: {response.get('message') or 'no reason given'}"
                )
            return None  # another unsolicited notification: nothing for this search
        if message_id != self.message_id:
            return None  # a late answer to an earlier operation on this connection
        controls: dict[str, Any] = response.get("controls") or {}
        if kind == "searchResEntry":
            state = controls.get(SYNC_STATE_OID)
            if state is None or state.get("value") is None:
                raise SyncProtocolError(f"entry {response.get('dn')!r} came without a Sync State control")
            return EntryEvent(sync=decode_sync_state(state["value"]), item=response)
        if kind == "intermediateResponse":
            if response.get("responseName") != SYNC_INFO_OID:
                return None
            return InfoEvent(decode_sync_info(response.get("responseValue") or b""))
        if kind == "searchResDone":
            done_control = controls.get(SYNC_DONE_OID)
            done = decode_sync_done(done_control.get("value") if done_control else None)
            return DoneEvent(
                result=int(response.get("result", -1)),
                description=str(response.get("description") or ""),
                message=str(response.get("message") or ""),
                done=done,
            )
        return None  # a search reference: out of scope, as in full_import


# ====================================================================== watermarks
#: Prefix of a watermark holding a cookie that is not UTF-8 text (OpenLDAP's cookies are ASCII).
_B64 = "base64:"


def cookie_to_watermark(cookie: bytes) -> str:
    """The watermark string for a sync cookie: the cookie itself when it is text (it is, from slapd)."""
    try:
        text = cookie.decode("utf-8")
    except UnicodeDecodeError:
        return _B64 + base64.b64encode(cookie).decode("ascii")
    return _B64 + base64.b64encode(cookie).decode("ascii") if text.startswith(_B64) else text


def watermark_to_cookie(watermark: str) -> bytes:
    """The sync cookie inside a watermark; ``CursorExpired`` when it is not one.

    slapd treats a cookie without a CSN as "no state" and silently sends a full reload that looks like a
    delta (no present phase, no deletes): such a watermark must never reach it.
    """
    cookie: bytes
    if watermark.startswith(_B64):
        try:
            cookie = base64.b64decode(watermark[len(_B64) :], validate=True)
        except (binascii.Error, ValueError):
            cookie = b""
    else:
        cookie = watermark.encode("utf-8")
    if b"csn=" not in cookie:
        shown = watermark if len(watermark) <= 80 else watermark[:77] + "..."
        raise CursorExpired(
            f"The watermark {shown!r} is not an LDAP sync cookie (no csn=): a full import is needed"
        )
    return cookie


# ====================================================================== events -> delta items
class SyncRefused(Exception):
    """The search ended with an LDAP error result (the caller maps it to an idsync error)."""

    def __init__(self, result: int, description: str, message: str) -> None:
        super().__init__(f"{description} (result {result}): {message}" if message else description)
        self.result = result
        self.description = description
        self.server_message = message


class SyncTimeout(Exception):
    """No message for ``idle_timeout_s`` while the server owed us one (during a refresh)."""


EntryConverter = Callable[[dict[str, Any], str], ImportedObject | ImportFailure]


def _expired(why: str) -> CursorExpired:
    return CursorExpired(f"The LDAP sync cookie has expired ({why}): a full import is needed")


def sync_items(
    search: SyncSearch,
    *,
    cookie: bytes | None,
    convert: EntryConverter,
    delete_type: str,
    poll_s: float,
    idle_timeout_s: float,
    stop: threading.Event | None = None,
) -> Iterator[DeltaItem]:
    """The delta items of one sync search started with ``cookie``.

    Changed entries (add / modify, renames included: same entryUUID, new DN) go through ``convert``;
    deletes (Sync State delete, syncIdSet in a delete phase) become ``DeletedObject(anchor=entryUUID)``.
    A ``Checkpoint`` follows the end of the refresh (searchResultDone in refreshOnly, Sync Info
    refreshDone in refreshAndPersist) and, in the persist stage, every entry or Sync Info carrying a new
    cookie. Cookies seen inside a refresh are never checkpointed: a refresh is not ordered by CSN.

    Raises ``CursorExpired`` on a present phase (the session log could not cover the cookie, so deletes
    could only be inferred from absence) or on e-syncRefreshRequired; ``SyncRefused`` on another error
    result; ``SyncTimeout`` when a refresh stalls; ``ConnectionLost``. Returns when ``stop`` is set, or when
    the server ends a persist search.
    """
    persisting = False
    latest = cookie
    last_message = time.monotonic()
    for event in search.events(poll_s):
        if stop is not None and stop.is_set():
            return
        if event is None:
            if not persisting and time.monotonic() - last_message > idle_timeout_s:
                raise SyncTimeout(f"no answer within {idle_timeout_s:.0f} s")
            continue
        last_message = time.monotonic()
        if isinstance(event, EntryEvent):
            sync = event.sync
            if sync.state == "present":
                raise _expired("the server answered with a present phase")
            if sync.state == "delete":
                dn = str(event.item.get("dn") or "") or None
                yield DeletedObject(anchor=sync.entry_uuid, object_type=delete_type, dn=dn, locator=dn)
            else:
                yield convert(event.item, sync.entry_uuid)
            if sync.cookie:
                latest = sync.cookie
                if persisting:
                    yield Checkpoint(cookie_to_watermark(latest))
        elif isinstance(event, InfoEvent):
            info = event.info
            if info.kind == "refreshPresent" or (info.kind == "syncIdSet" and not info.refresh_deletes):
                raise _expired("the session log does not reach back to it, the server sent a present phase")
            for entry_uuid in info.uuids:
                yield DeletedObject(anchor=entry_uuid, object_type=delete_type, locator=entry_uuid)
            if info.cookie:
                latest = info.cookie
            if info.kind == "refreshDelete" and info.refresh_done and not persisting:
                persisting = True  # refreshAndPersist: the refresh is complete, changes are pushed from now
                if latest:
                    yield Checkpoint(cookie_to_watermark(latest))
            elif persisting and info.cookie:
                yield Checkpoint(cookie_to_watermark(info.cookie))
        else:
            if event.result == E_SYNC_REFRESH_REQUIRED:
                raise _expired(f"e-syncRefreshRequired: {event.message or 'the server wants a full reload'}")
            if event.result == 53 and cookie is not None:  # unwillingToPerform, e.g. a cookie from the future
                raise _expired(f"the server refused it: {event.message or event.description}")
            if event.result != 0:
                raise SyncRefused(event.result, event.description, event.message)
            if cookie is not None and not persisting and not event.done.refresh_deletes:
                raise _expired("the server ended the refresh with a present phase")
            if event.done.cookie:
                latest = event.done.cookie
            if latest:
                yield Checkpoint(cookie_to_watermark(latest))
            return


__all__ = [
    "E_SYNC_REFRESH_REQUIRED",
    "SYNC_DONE_OID",
    "SYNC_INFO_OID",
    "SYNC_REQUEST_OID",
    "SYNC_STATE_OID",
    "ConnectionLost",
    "DoneEvent",
    "EntryConverter",
    "EntryEvent",
    "InfoEvent",
    "SyncDone",
    "SyncEvent",
    "SyncInfo",
    "SyncProtocolError",
    "SyncRefused",
    "SyncSearch",
    "SyncState",
    "SyncTimeout",
    "cookie_to_watermark",
    "decode_sync_done",
    "decode_sync_info",
    "decode_sync_state",
    "encode_sync_request",
    "format_uuid",
    "sync_items",
    "sync_request_control",
    "watermark_to_cookie",
]
