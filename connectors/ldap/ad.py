"""The Active Directory dialect of the LDAP connector (``dialect: ad``).

What AD does differently from OpenLDAP, and what this module does about it:

- anchor: ``objectGUID``, 16 bytes in Microsoft's mixed-endian GUID layout, shown as the canonical GUID
  string; looked up by the escaped binary filter ``(objectGUID=\\xx...)`` (MS-ADTS 3.1.1.3.1.2.4 also allows
  ``<GUID=...>`` DNs, not needed here);
- delta import: the DirSync control (1.2.840.113556.1.4.841, cookie as watermark, more-data loop,
  tombstones with ``isDeleted=TRUE``) or uSNChanged polling against rootDSE ``highestCommittedUSN`` with the
  Show Deleted control (1.2.840.113556.1.4.417) on the Deleted Objects container; AD has no RFC 4533, so
  no follow;
- passwords: ``unicodePwd`` as the quoted UTF-16LE string, only over LDAPS or StartTLS;
- ``userAccountControl``: ``accountDisabled`` (bit 0x2) derived on import and accepted on export
  (read-modify-write, other bits kept); users are created disabled and enabled after their password is set;
- errors: AD's extended error in the diagnostic message (``0000052D: ...``, ``data 775``) refines the MIM
  error type and gives a readable reason.

Only tested against recorded AD exchanges replayed over TCP (tests/fixtures/ldap_replay.py); see
docs/connectors/active-directory.md for what has to be verified on a real domain controller.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ldap3 import BASE, LEVEL, MODIFY_REPLACE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPException, LDAPOperationResult
from ldap3.protocol.microsoft import dir_sync_control, show_deleted_control
from ldap3.utils.conv import escape_bytes, escape_filter_chars
from pydantic import SecretStr

from connectors.base import (
    Checkpoint,
    CursorExpired,
    DeletedObject,
    DeltaItem,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
)
from connectors.ldap.connector import LdapConnector, _Entry, _get, decode_value
from connectors.ldap.dn import is_within, split_dn
from connectors.ldap.errors import CREDENTIAL_CODES, map_ldap_error
from schemas.config import LdapConnectorConfig
from schemas.errors import ConfigError, DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, Attrs, PendingExport

OID_DIRSYNC = "1.2.840.113556.1.4.841"
OID_SHOW_DELETED = "1.2.840.113556.1.4.417"
#: userAccountControl flags (MS-ADTS 2.2.16).
UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
#: DirSync MaxBytes per response (the .NET DirSyncRequestControl default); more-data loops for the rest.
DIRSYNC_MAX_BYTES = 1048576
#: The derived attribute for bit 0x2 of userAccountControl.
ACCOUNT_DISABLED = "accountDisabled"

_DIRSYNC_PREFIX = "dirsync:"
_USN_PREFIX = "usn:"

#: AD attributes of octet-string syntax: always base64, even when the bytes happen to be valid UTF-8.
AD_BINARY_ATTRIBUTES = frozenset(
    a.lower()
    for a in (
        "objectSid",
        "sIDHistory",
        "tokenGroups",
        "parentGUID",
        "msExchMailboxGuid",
        "msExchMasterAccountSid",
        "mS-DS-ConsistencyGuid",
        "thumbnailPhoto",
        "jpegPhoto",
        "userCertificate",
        "userSMIMECertificate",
        "cACertificate",
        "logonHours",
        "nTSecurityDescriptor",
        "msDS-GenerationId",
        "msDS-AllowedToActOnBehalfOfOtherIdentity",
        "msDS-KeyCredentialLink",
    )
)


# ====================================================================== objectGUID
def guid_to_str(raw: bytes) -> str:
    """objectGUID bytes -> canonical GUID text. AD stores the first three fields little-endian
    (``33221100 5544 7766 8899aabbccddeeff`` -> ``00112233-4455-6677-8899-aabbccddeeff``)."""
    if len(raw) != 16:
        raise ValueError(f"objectGUID must be 16 bytes, got {len(raw)}")
    return str(uuid.UUID(bytes_le=raw))


def guid_to_bytes(text: str) -> bytes:
    """Canonical GUID text -> the 16 objectGUID bytes; ValueError when ``text`` is not a GUID."""
    return uuid.UUID(text.strip()).bytes_le


def guid_filter(text: str) -> str:
    """``(objectGUID=\\xx...)`` for a GUID string, every byte escaped (a binary equality match)."""
    return f"(objectGUID={escape_bytes(guid_to_bytes(text))})"


# ====================================================================== passwords
def encode_unicode_pwd(password: str) -> bytes:
    """The unicodePwd value AD expects: the password in double quotes, UTF-16LE (MS-ADTS 3.1.1.3.1.5.1)."""
    return ('"' + password + '"').encode("utf-16-le")


# ====================================================================== AD errors
#: "0000052D: AtrErr: DSID-03191083, #1: ..." -> 0x52D: the Win32 error at the start of AD's message.
_WIN32_CODE = re.compile(r"^\s*([0-9A-Fa-f]{8}):")
#: "... AcceptSecurityContext error, data 775, v4563" -> 0x775: the reason of a refused bind.
_BIND_DATA = re.compile(r"\bdata ([0-9A-Fa-f]{1,8})\b")

#: Win32 errors AD puts in diagnostic messages: (MIM error type, what it means for the object).
AD_ERRORS: dict[int, tuple[str, str]] = {
    0x0000052D: (
        "constraint-violation",
        "the password does not meet the domain's length, complexity or history requirements",
    ),
    0x00000524: ("cd-existing-object", "another account already has this sAMAccountName"),
    0x00002071: ("cd-existing-object", "an object with this name already exists"),
    0x00002014: (
        "schema-violation",
        "object class violation: a mandatory attribute is missing or an attribute is not allowed",
    ),
    0x0000202F: ("constraint-violation", "a constraint of the attribute was violated"),
    0x0000208D: ("cd-missing-object", "the object or its parent does not exist"),
    0x00002030: ("cd-missing-object", "there is no such object on the server"),
    0x00002098: ("permission-issue", "the bind account lacks the access rights for this operation"),
    0x00000005: ("permission-issue", "access denied to the bind account"),
    0x0000001F: (
        "unwilling-to-perform",
        "the domain controller will not perform this (for unicodePwd: the connection is not encrypted)",
    ),
    0x00002077: ("schema-violation", "illegal modify operation for this attribute"),
}
#: Reasons of a refused AD bind ("data NNN" of the 80090308 message): all are credential problems.
AD_BIND_REASONS: dict[int, str] = {
    0x525: "user not found",
    0x52E: "invalid credentials",
    0x530: "not permitted to log on at this time",
    0x531: "not permitted to log on at this workstation",
    0x532: "password expired",
    0x533: "account disabled",
    0x701: "account expired",
    0x773: "user must reset password",
    0x775: "account locked out",
}


def ad_error_code(message: str | None) -> int | None:
    """The Win32 error AD puts first in a diagnostic message, or None."""
    match = _WIN32_CODE.match(message or "")
    return int(match.group(1), 16) if match else None


def _one_line(text: str) -> str:
    # AD's messages span lines and end with a NUL.
    return " ".join(text.replace("\x00", " ").split())


def _redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def map_ad_error(
    exc: LDAPException,
    *,
    operation: str,
    dn: str | None = None,
    uri: str | None = None,
    starting: bool = False,
    secret: str | None = None,
) -> IdsyncError:
    """``map_ldap_error``, refined by the AD extended error in the server's diagnostic message."""
    generic = map_ldap_error(exc, operation=operation, dn=dn, uri=uri, starting=starting, secret=secret)
    if not isinstance(exc, LDAPOperationResult) or not exc.message:
        return generic
    diagnostic = _one_line(str(exc.message))
    code = int(exc.result) if exc.result is not None else -1
    where = f" {uri}" if uri else ""
    data = _BIND_DATA.search(diagnostic)
    if code in CREDENTIAL_CODES and data is not None and int(data.group(1), 16) in AD_BIND_REASONS:
        reason = AD_BIND_REASONS[int(data.group(1), 16)]
        return FatalError(
            _redact(
                f"Active Directory{where} refused the credentials of {dn!r}: {reason} ({diagnostic})",
                (secret,),
            ),
            error_type="no-start-credentials",
        )
    win32 = ad_error_code(diagnostic)
    known = AD_ERRORS.get(win32) if win32 is not None else None
    if known is None:
        return generic
    error_type, meaning = known
    subject = f"LDAP {operation} of {dn!r}" if dn else f"LDAP {operation}"
    message = _redact(
        f"{subject} failed: {meaning} (AD error {win32:08X}, result {code} {exc.description}: {diagnostic})",
        (secret,),
    )
    if isinstance(generic, FatalError | RetriableError):
        return type(generic)(message, error_type=generic.error_type)
    return DataError(message, error_type=error_type)


def _scrubbed(err: IdsyncError, secret: str) -> IdsyncError:
    """``err`` with ``secret`` (and its quoted form) removed from the message, same class and type."""
    text = _redact(err.message, (f'"{secret}"', secret))
    if text == err.message:
        return err
    return type(err)(text, error_type=err.error_type)


# ====================================================================== exports touching accounts
def _flag(value: str) -> bool:
    folded = value.strip().lower()
    if folded in ("true", "1", "yes"):
        return True
    if folded in ("false", "0", "no"):
        return False
    raise DataError(
        f"{ACCOUNT_DISABLED} must be 'true' or 'false', got {value!r}", error_type="invalid-attribute-value"
    )


@dataclass(frozen=True)
class _AccountPlan:
    """An export split into its plain attributes and the account parts AD needs in a given order."""

    rest: dict[str, AttrChange]
    password: SecretStr | None = None
    disabled: bool | None = None
    uac: int | None = None

    @classmethod
    def of(cls, attributes: Mapping[str, AttrChange]) -> _AccountPlan:
        rest: dict[str, AttrChange] = {}
        password: SecretStr | None = None
        disabled: bool | None = None
        uac: int | None = None
        for name, change in attributes.items():
            lname = name.lower()
            setting = change.op != "delete" and bool(change.values)
            if lname == "unicodepwd":
                if not setting or len(change.values) != 1:
                    # Never echo the values: they are passwords.
                    raise DataError(
                        "unicodePwd can only be set, to exactly one value",
                        error_type="invalid-attribute-value",
                    )
                password = SecretStr(change.values[0])
            elif lname == ACCOUNT_DISABLED.lower():
                if setting:  # a null flow leaves the account as it is
                    disabled = _flag(change.values[0])
            elif lname == "useraccountcontrol" and setting:
                try:
                    uac = int(change.values[0])
                except ValueError:
                    raise DataError(
                        f"userAccountControl must be an integer, got {change.values[0]!r}",
                        error_type="invalid-attribute-value",
                    ) from None
            else:
                rest[name] = change
        return cls(rest=rest, password=password, disabled=disabled, uac=uac)

    @property
    def touches_account(self) -> bool:
        return self.password is not None or self.disabled is not None or self.uac is not None

    def creation_uac(self) -> int:
        """The userAccountControl the new account should end with (disabled unless the export says not)."""
        value = self.uac if self.uac is not None else UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE
        if self.disabled is not None:
            value = value | UF_ACCOUNTDISABLE if self.disabled else value & ~UF_ACCOUNTDISABLE
        return value


def _is_user_add(attributes: Mapping[str, AttrChange]) -> bool:
    classes = {v.lower() for v in _get({k: v.values for k, v in attributes.items()}, "objectClass")}
    return bool(classes & {"user", "inetorgperson"}) and "computer" not in classes


# ====================================================================== rootDSE
@dataclass(frozen=True, slots=True)
class RootDse:
    host: str
    highest_usn: int
    naming_context: str


def _raw_get(raw: Mapping[str, Any], name: str) -> list[bytes]:
    lname = name.lower()
    for key, values in raw.items():
        if key.lower() == lname:
            return [bytes(v) for v in values]
    return []


# ====================================================================== the connector
class AdLdapConnector(LdapConnector):
    """``LdapConnector`` speaking Active Directory; built by ``LdapConnector(...)`` when dialect is "ad".

    Capabilities: full import, delta import (DirSync or uSNChanged), export, password set, test
    connection. No follow: AD does not implement RFC 4533 content synchronization.
    """

    follow = None  # type: ignore[assignment]  # blocks the Follow capability (typing protocols honour None)
    #: AD does not implement RFC 4528 assertions: updates read the entry first.
    asserted_updates = False

    def __init__(self, name: str, config: LdapConnectorConfig) -> None:
        if config.dialect != "ad":
            raise ConfigError(f"connectors.{name}: AdLdapConnector needs dialect: ad")
        explicit = config.model_fields_set
        if "anchor_attribute" in explicit and config.anchor_attribute.lower() != "objectguid":
            raise ConfigError(
                f"connectors.{name}.anchor_attribute: the AD dialect anchors on objectGUID "
                f"(got {config.anchor_attribute!r}); leave it unset or set it to objectGUID"
            )
        update: dict[str, Any] = {"anchor_attribute": "objectGUID"}
        if "object_classes" not in explicit:
            update["object_classes"] = {"person": "user"}
        super().__init__(name, config.model_copy(update=update))

    def __enter__(self) -> AdLdapConnector:
        return self

    # ================================================================== errors, encryption
    def _error(
        self, exc: LDAPException, operation: str, dn: str | None, *, starting: bool = False
    ) -> IdsyncError:
        return map_ad_error(
            exc, operation=operation, dn=dn, uri=self.config.uri, starting=starting, secret=self._password
        )

    def _encrypted(self) -> bool:
        return self.config.uri.lower().startswith("ldaps://") or self.config.start_tls

    def _require_encryption(self, what: str) -> None:
        if not self._encrypted():
            raise FatalError(
                f"Refusing to {what} over the unencrypted connection to {self.config.uri}: Active Directory "
                f"accepts unicodePwd only over LDAPS or StartTLS (use an ldaps:// uri or start_tls: true)",
                error_type="password-needs-encryption",
            )

    # ================================================================== reading
    def _entry(self, item: Mapping[str, Any]) -> _Entry:
        attrs: Attrs = {}
        anchor: str | None = None
        for name, raw_values in item["raw_attributes"].items():
            lname = name.lower()
            if lname == "objectguid":
                anchor = guid_to_str(bytes(raw_values[0])) if raw_values else None
                continue
            binary = lname in AD_BINARY_ATTRIBUTES or lname.endswith(";binary")
            values = [decode_value(bytes(v), binary=binary) for v in raw_values]
            if values:
                attrs[name] = values
        uac = _get(attrs, "userAccountControl")
        if uac:
            attrs[ACCOUNT_DISABLED] = ["true" if int(uac[0]) & UF_ACCOUNTDISABLE else "false"]
        return _Entry(dn=item["dn"], attributes=attrs, anchor=anchor)

    def _anchor_filter(self, anchor: str) -> str:
        try:
            return guid_filter(anchor)
        except ValueError:
            raise DataError(
                f"Anchor {anchor!r} is not an objectGUID (GUID text expected)", error_type="invalid-anchor"
            ) from None

    def _class_filter(self, *, live: bool) -> str:
        """The configured classes as a filter. Live users: ``(&(objectCategory=person)(objectClass=user))``,
        AD's idiom that leaves out computers (also of class user). Tombstones lose objectCategory, so
        deleted objects are matched by objectClass alone."""
        parts: list[str] = []
        for oc in dict.fromkeys(self.config.object_classes.values()):
            part = f"(objectClass={escape_filter_chars(oc)})"
            if live and oc.lower() == "user":
                part = f"(&(objectCategory=person){part})"
            parts.append(part)
        return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"

    def _import_filter(self) -> str:
        return self._class_filter(live=True)

    def _import_attributes(self) -> list[str]:
        wanted = super()._import_attributes()
        # accountDisabled is derived from userAccountControl: ask AD for that instead.
        mapped = ["userAccountControl" if a.lower() == ACCOUNT_DISABLED.lower() else a for a in wanted]
        unique: dict[str, str] = {}
        for name in mapped:
            unique.setdefault(name.lower(), name)
        return list(unique.values())

    def _object_type(self, object_classes: list[str]) -> str | None:
        # AD lists objectClass from top to the most specific class: a computer (top ... user, computer) is
        # typed "computer" when that is configured, not by its superclass user.
        by_class: dict[str, str] = {}
        for object_type, oc in self._oc_by_type.items():
            by_class.setdefault(oc, object_type)
        for oc in reversed(object_classes):
            found = by_class.get(oc.lower())
            if found is not None:
                return found
        return None

    def _search(
        self,
        base: str,
        search_filter: str,
        scope: str,
        attributes: list[str],
        *,
        controls: list[Any] | None = None,
        size_limit: int = 0,
        operation: str = "search",
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One search on the shared connection: (entries, decoded response controls)."""
        found: list[dict[str, Any]] = []
        response_controls: dict[str, Any] = {}

        def search(conn: Connection) -> None:
            conn.search(
                base, search_filter, scope, attributes=attributes, controls=controls, size_limit=size_limit
            )
            found.extend(r for r in conn.response or [] if r.get("type") == "searchResEntry")
            response_controls.update((conn.result or {}).get("controls") or {})

        self._call(operation, base, search, starting=True)
        return found, response_controls

    def _paged(
        self, base: str, search_filter: str, scope: str, attributes: list[str], controls: list[Any] | None
    ) -> Iterator[dict[str, Any]]:
        """A paged search yielding entries; the lock is held per page step, not across yields."""
        with self._lock:
            conn = self._connection(starting=True)
            pages: Iterator[dict[str, Any]] = conn.extend.standard.paged_search(
                base,
                search_filter,
                scope,
                attributes=attributes,
                controls=controls,
                paged_size=self.config.page_size,
                generator=True,
            )
        while True:
            with self._lock:
                try:
                    item = next(pages)
                except StopIteration:
                    return
                except LDAPException as exc:
                    self._drop()
                    raise self._error(exc, "paged search", base, starting=True) from None
            if item.get("type") == "searchResEntry":
                yield item

    # ================================================================== rootDSE, watermarks
    def root_dse(self) -> RootDse:
        """This domain controller's name, highestCommittedUSN and the naming context holding base_dn."""
        wanted = ["dnsHostName", "highestCommittedUSN", "defaultNamingContext", "namingContexts"]
        found, _ = self._search("", "(objectClass=*)", BASE, wanted, operation="rootDSE read")
        raw = found[0]["raw_attributes"] if found else {}
        names = _raw_get(raw, "dnsHostName")
        host = names[0].decode("utf-8", "replace") if names else ""
        usn_values = _raw_get(raw, "highestCommittedUSN")
        if not host or not usn_values:
            raise FatalError(
                f"The rootDSE of {self.config.uri} has no dnsHostName/highestCommittedUSN: is it Active "
                f"Directory?",
                error_type="no-start-not-active-directory",
            )
        contexts = [v.decode("utf-8", "replace") for v in _raw_get(raw, "namingContexts")]
        holding = [nc for nc in contexts if is_within(self.config.base_dn, nc)]
        if holding:
            naming_context = max(holding, key=lambda nc: len(split_dn(nc)))
        else:
            default = _raw_get(raw, "defaultNamingContext")
            naming_context = default[0].decode("utf-8", "replace") if default else self.config.base_dn
        return RootDse(host=host, highest_usn=int(usn_values[0]), naming_context=naming_context)

    def _require_delta(self) -> None:
        if getattr(self.config, "delta", None) == "none":
            raise FatalError(
                f"Delta import is off for LDAP connector {self.name!r} (delta: none)",
                error_type="no-start-delta-disabled",
            )

    def current_watermark(self) -> str:
        """uSNChanged: rootDSE's highestCommittedUSN on this DC. DirSync: AD has no "now" cookie, so this
        runs a DirSync pass from the empty cookie and keeps only the cookie it ends with."""
        self._require_delta()
        if self.config.ad_delta == "usnchanged":
            root = self.root_dse()
            return f"{_USN_PREFIX}{root.host}:{root.highest_usn}"
        naming_context = self.root_dse().naming_context
        cookie = b""
        more = True
        while more:
            _, cookie, more = self._dirsync_page(naming_context, cookie)
        return _DIRSYNC_PREFIX + base64.b64encode(cookie).decode("ascii")

    def delta_import(self, watermark: str | None) -> Iterator[DeltaItem]:
        """Changes since ``watermark`` (DirSync cookie or uSN), ending with a ``Checkpoint``.

        ``None`` means "from now". Raises ``CursorExpired`` for a cookie the DC rejects, a uSN taken on
        another DC or before a restore, and a watermark of the other ``ad_delta`` mode.
        """
        self._require_delta()
        if watermark is None:
            yield Checkpoint(self.current_watermark())
            return
        if self.config.ad_delta == "usnchanged":
            yield from self._usn_delta(watermark)
        else:
            yield from self._dirsync_delta(watermark)

    # ------------------------------------------------------------------ DirSync
    def _dirsync_attributes(self) -> list[str]:
        # The DirSync attribute list also filters: tombstones only come when isDeleted is asked for.
        wanted = self._import_attributes()
        extra = [a for a in ("isDeleted", "objectGUID") if a.lower() not in {w.lower() for w in wanted}]
        return [*wanted, *extra]

    def _dirsync_page(self, naming_context: str, cookie: bytes) -> tuple[list[dict[str, Any]], bytes, bool]:
        """One DirSync search: (entries, new cookie, more data)."""
        controls = [
            dir_sync_control(
                criticality=True,
                object_security=False,
                ancestors_first=True,  # parents before children: staging sees containers first
                public_data_only=False,
                incremental_values=False,
                max_length=DIRSYNC_MAX_BYTES,
                cookie=cookie or None,
            ),
            show_deleted_control(criticality=True),
        ]
        try:
            entries, response = self._search(
                naming_context,
                self._class_filter(live=False),
                SUBTREE,
                self._dirsync_attributes(),
                controls=controls,
                operation="DirSync search",
            )
        except IdsyncError as err:
            raise self._dirsync_refused(err, cookie) from None
        value = (response.get(OID_DIRSYNC) or {}).get("value")
        if not isinstance(value, dict):
            raise FatalError(
                f"{self.config.uri} answered a DirSync search without the DirSync control: is it Active "
                f"Directory? (or set ad_delta: usnchanged)",
                error_type="no-start-delta-unsupported",
            )
        new_cookie, more = bytes(value.get("cookie") or b""), bool(value.get("more_results"))
        if more and new_cookie == cookie:
            # Searching again with the same cookie would return the same page forever.
            raise FatalError(
                f"{self.config.uri} reported more DirSync data without advancing the cookie",
                error_type="no-start-delta-unsupported",
            )
        return entries, new_cookie, more

    def _dirsync_refused(self, err: IdsyncError, cookie: bytes) -> IdsyncError:
        text = err.message
        # A cookie the DC cannot use: "0000203D: LdapErr: ..., comment: Error processing control" with a
        # protocol error (documented for cookies from another DC or Windows version): resync from scratch.
        if cookie and "error processing control" in text.lower():
            return CursorExpired(f"The domain controller rejected the DirSync cookie: {text}")
        if err.error_type in ("permission-issue", "no-start-permission"):
            return FatalError(
                f"{text} -- DirSync needs the 'Replicating Directory Changes' right on the naming context "
                f"(or set ad_delta: usnchanged)",
                error_type="no-start-permission",
            )
        return err

    def _dirsync_delta(self, watermark: str) -> Iterator[DeltaItem]:
        if not watermark.startswith(_DIRSYNC_PREFIX):
            raise CursorExpired(f"Watermark {watermark[:40]!r} is not a DirSync cookie (ad_delta: dirsync)")
        try:
            cookie = base64.b64decode(watermark[len(_DIRSYNC_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise CursorExpired("The stored DirSync cookie is not valid base64") from None
        if not cookie:
            raise CursorExpired("The stored DirSync cookie is empty")
        naming_context = self.root_dse().naming_context
        more = True
        while more:
            entries, cookie, more = self._dirsync_page(naming_context, cookie)
            for item in entries:
                yield from self._dirsync_item(item)
            # Every entry of this page is out: a delta resumed from here misses nothing.
            yield Checkpoint(_DIRSYNC_PREFIX + base64.b64encode(cookie).decode("ascii"))

    def _dirsync_item(self, item: Mapping[str, Any]) -> Iterator[DeltaItem]:
        dn = str(item.get("dn", "?"))
        raw = item.get("raw_attributes") or {}
        guid = _raw_get(raw, "objectGUID")
        try:
            anchor = guid_to_str(guid[0]) if guid else None
        except ValueError as exc:
            yield ImportFailure(locator=dn, error_type="import-decode-error", message=f"{dn!r}: {exc}")
            return
        if anchor is None:
            yield ImportFailure(
                locator=dn,
                error_type="import-missing-anchor",
                message=f"DirSync entry {dn!r} has no objectGUID",
            )
            return
        classes = [v.decode("utf-8", "replace") for v in _raw_get(raw, "objectClass")]
        if [v.upper() for v in _raw_get(raw, "isDeleted")] == [b"TRUE"]:
            object_type = self._tombstone_type(classes)
            if object_type is not None:
                yield DeletedObject(anchor=anchor, object_type=object_type, dn=None, locator=dn)
            return
        # DirSync returns only the changed attributes, from the whole naming context: read the full image,
        # in scope. Gone from base_dn (moved out, or a class the import filter leaves out): a delete here.
        current = self._reread(anchor) if is_within(dn, self.config.base_dn) else None
        if current is None:
            object_type = self._tombstone_type(classes)
            if object_type is not None:
                yield DeletedObject(anchor=anchor, object_type=object_type, dn=dn, locator=dn)
            return
        yield current

    def _tombstone_type(self, classes: list[str]) -> str | None:
        """The object type of a deleted or out-of-scope object; without objectClass, the only type."""
        if classes:
            return self._object_type(classes)
        types = list(self.config.object_classes)
        return types[0] if len(types) == 1 else None

    def _reread(self, anchor: str) -> ImportedObject | ImportFailure | None:
        search_filter = f"(&{guid_filter(anchor)}{self._import_filter()})"
        found, _ = self._search(
            self.config.base_dn, search_filter, SUBTREE, self._import_attributes(), size_limit=2
        )
        if not found:
            return None
        if len(found) > 1:
            return ImportFailure(
                locator=anchor,
                error_type="ambiguous-anchor",
                message=f"objectGUID {anchor} matches two entries",
            )
        return self._imported(found[0])

    # ------------------------------------------------------------------ uSNChanged
    def _usn_delta(self, watermark: str) -> Iterator[DeltaItem]:
        host, _, number = watermark[len(_USN_PREFIX) :].rpartition(":")
        if not watermark.startswith(_USN_PREFIX) or not host or not number.isdigit():
            raise CursorExpired(f"Watermark {watermark[:40]!r} is not a uSN watermark (ad_delta: usnchanged)")
        since = int(number)
        # Taken first: changes committed while this delta runs come again next time, none are lost.
        root = self.root_dse()
        if root.host.lower() != host.lower():
            raise CursorExpired(
                f"The uSN watermark was taken on {host}, this connection reached {root.host}: uSNs are per "
                f"domain controller"
            )
        if root.highest_usn < since:
            raise CursorExpired(
                f"{root.host}'s highestCommittedUSN ({root.highest_usn}) is below the watermark ({since}): "
                f"restored from backup?"
            )
        changed = f"(&{self._import_filter()}(uSNChanged>={since + 1}))"
        for item in self._paged(self.config.base_dn, changed, SUBTREE, self._import_attributes(), None):
            yield self._imported(item)
        deleted = f"(&(isDeleted=TRUE)(uSNChanged>={since + 1}){self._class_filter(live=False)})"
        container = f"CN=Deleted Objects,{root.naming_context}"
        tombstone_attrs = ["objectGUID", "objectClass", "lastKnownParent", "isDeleted"]
        controls = [show_deleted_control(criticality=True)]
        for item in self._paged(container, deleted, LEVEL, tombstone_attrs, controls):
            yield from self._usn_tombstone(item)
        yield Checkpoint(f"{_USN_PREFIX}{root.host}:{root.highest_usn}")

    def _usn_tombstone(self, item: Mapping[str, Any]) -> Iterator[DeltaItem]:
        dn = str(item.get("dn", "?"))
        raw = item.get("raw_attributes") or {}
        guid = _raw_get(raw, "objectGUID")
        parent = [v.decode("utf-8", "replace") for v in _raw_get(raw, "lastKnownParent")]
        if not guid or (parent and not is_within(parent[0], self.config.base_dn)):
            return  # deleted elsewhere in the domain
        try:
            anchor = guid_to_str(guid[0])
        except ValueError as exc:
            yield ImportFailure(locator=dn, error_type="import-decode-error", message=f"{dn!r}: {exc}")
            return
        object_type = self._tombstone_type(
            [v.decode("utf-8", "replace") for v in _raw_get(raw, "objectClass")]
        )
        if object_type is not None:
            yield DeletedObject(anchor=anchor, object_type=object_type, dn=None, locator=dn)

    # ================================================================== passwords
    def set_password(self, anchor: str, dn: str | None, password: SecretStr) -> None:
        """Set ``unicodePwd`` of the object with this anchor (or DN): an administrative reset, TLS only."""
        self._require_encryption("set a password")
        entry = self._find(anchor, ["1.1"]) if anchor else (self._read(dn, ["1.1"]) if dn else None)
        if entry is None:
            raise DataError(
                f"Cannot set the password of {dn or anchor!r}: no such object under {self.config.base_dn!r}",
                error_type="cd-missing-object",
            )
        self._write_password(entry.dn, password)

    def _write_password(self, dn: str, password: SecretStr) -> None:
        secret = password.get_secret_value()
        value = encode_unicode_pwd(secret)

        def modify(conn: Connection) -> None:
            # Checked on the live connection too: the config could say TLS while the socket is not.
            if not (conn.server.ssl or conn.tls_started):
                raise FatalError(
                    f"Refusing to set a password: the connection to {self.config.uri} is not encrypted",
                    error_type="password-needs-encryption",
                )
            conn.modify(dn, {"unicodePwd": [(MODIFY_REPLACE, [value])]})

        try:
            self._call("password set", dn, modify)
        except IdsyncError as err:
            raise _scrubbed(err, secret) from None

    # ================================================================== exports
    def apply(self, export: PendingExport) -> ExportOutcome:
        """As ``LdapConnector.apply``, with unicodePwd, accountDisabled and userAccountControl handled the
        AD way: password over TLS only, account bits read-modify-written, new users enabled last."""
        if export.op == "delete":
            return super().apply(export)
        plan = _AccountPlan.of(export.attributes)
        if plan.password is not None:
            self._require_encryption("export unicodePwd")
        if export.op == "add":
            return self._add(export, plan)
        outcome = super().apply(export.model_copy(update={"attributes": plan.rest}))
        dn = outcome.dn or export.new_dn or export.dn
        if plan.password is not None:
            self._write_password(dn, plan.password)
        self._set_uac(dn, explicit=plan.uac, disabled=plan.disabled)
        return outcome

    def _add(self, export: PendingExport, plan: _AccountPlan) -> ExportOutcome:
        if not (plan.touches_account or _is_user_add(export.attributes)):
            return super().apply(export)
        # AD keeps no enabled account without a password: create disabled, set the password, then enable.
        final = plan.creation_uac()
        attributes = dict(plan.rest)
        attributes["userAccountControl"] = AttrChange(op="replace", values=[str(final | UF_ACCOUNTDISABLE)])
        outcome = super().apply(export.model_copy(update={"attributes": attributes}))
        dn = outcome.dn or export.dn
        if plan.password is not None:
            self._write_password(dn, plan.password)
        if "converted-add-to-update" in outcome.actions:
            # Re-delivered add (or a pre-existing account): only what the export itself says.
            self._set_uac(dn, explicit=plan.uac, disabled=plan.disabled)
        else:
            self._set_uac(dn, explicit=final, disabled=None)
        return outcome

    def _convert_add(self, dn: str, changes: Mapping[str, AttrChange]) -> None:
        if self._read(dn, ["1.1"]) is None:
            # AD said "already exists" but nothing has this DN: a unique value of the add is taken
            # (00000524: the sAMAccountName, or a userPrincipalName).
            raise DataError(
                f"Cannot add {dn!r}: Active Directory reports an existing object, but none has this DN -- "
                f"another account holds its sAMAccountName or userPrincipalName",
                error_type="cd-existing-object",
            )
        # userAccountControl is applied afterwards by read-modify-write: converting must not disable.
        super()._convert_add(dn, {k: v for k, v in changes.items() if k.lower() != "useraccountcontrol"})

    def _set_uac(self, dn: str, *, explicit: int | None, disabled: bool | None) -> None:
        """Read userAccountControl, set or clear ACCOUNTDISABLE (other bits kept), write if it changed."""
        if explicit is None and disabled is None:
            return
        entry = self._read(dn, ["userAccountControl"])
        if entry is None:
            raise DataError(
                f"Cannot set userAccountControl of {dn!r}: no such entry", error_type="cd-missing-object"
            )
        have = _get(entry.attributes, "userAccountControl")
        current = int(have[0]) if have else None
        value = explicit if explicit is not None else current
        if value is None:
            raise DataError(
                f"Cannot enable or disable {dn!r}: it has no userAccountControl (not an account)",
                error_type="invalid-attribute-value",
            )
        if disabled is not None:
            value = value | UF_ACCOUNTDISABLE if disabled else value & ~UF_ACCOUNTDISABLE
        if value != current:
            self._modify(dn, {"userAccountControl": [(MODIFY_REPLACE, [str(value)])]})


__all__ = [
    "ACCOUNT_DISABLED",
    "AD_BIND_REASONS",
    "AD_ERRORS",
    "AdLdapConnector",
    "RootDse",
    "encode_unicode_pwd",
    "guid_filter",
    "guid_to_bytes",
    "guid_to_str",
    "map_ad_error",
]
