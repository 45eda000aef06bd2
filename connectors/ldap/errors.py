"""Translation of ldap3 exceptions into idsync errors carrying MIM error types."""

from __future__ import annotations

from ldap3.core import results as rc
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPMaximumRetriesError,
    LDAPOperationResult,
    LDAPResponseTimeoutError,
    LDAPSSLConfigurationError,
    LDAPStartTLSError,
)

from schemas.errors import DataError, FatalError, IdsyncError, RetriableError

#: Result codes that mean "the server cannot serve now": try again later.
RETRIABLE_CODES = frozenset(
    {
        rc.RESULT_TIME_LIMIT_EXCEEDED,
        rc.RESULT_BUSY,
        rc.RESULT_UNAVAILABLE,
        rc.RESULT_ADMIN_LIMIT_EXCEEDED,
        rc.RESULT_LOOP_DETECTED,
        81,  # serverDown (client-side code)
        85,  # timeout
        91,  # connectError
    }
)
CREDENTIAL_CODES = frozenset({rc.RESULT_INVALID_CREDENTIALS, rc.RESULT_INAPPROPRIATE_AUTHENTICATION})
AUTH_SETUP_CODES = frozenset(
    {
        rc.RESULT_AUTH_METHOD_NOT_SUPPORTED,
        rc.RESULT_STRONGER_AUTH_REQUIRED,
        rc.RESULT_CONFIDENTIALITY_REQUIRED,
    }
)
SCHEMA_CODES = frozenset(
    {
        rc.RESULT_OBJECT_CLASS_VIOLATION,
        rc.RESULT_UNDEFINED_ATTRIBUTE_TYPE,
        rc.RESULT_INVALID_ATTRIBUTE_SYNTAX,
        rc.RESULT_INAPPROPRIATE_MATCHING,
        rc.RESULT_NAMING_VIOLATION,
        rc.RESULT_NOT_ALLOWED_ON_RDN,
        rc.RESULT_OBJECT_CLASS_MODS_PROHIBITED,
    }
)
#: Remaining data-level codes with their own MIM-ish names.
DATA_CODES: dict[int, str] = {
    rc.RESULT_CONSTRAINT_VIOLATION: "constraint-violation",
    rc.RESULT_ENTRY_ALREADY_EXISTS: "cd-existing-object",
    rc.RESULT_INSUFFICIENT_ACCESS_RIGHTS: "permission-issue",
    rc.RESULT_ATTRIBUTE_OR_VALUE_EXISTS: "attribute-value-exists",
    rc.RESULT_NO_SUCH_ATTRIBUTE: "no-such-attribute",
    rc.RESULT_INVALID_DN_SYNTAX: "invalid-dn",
    rc.RESULT_NOT_ALLOWED_ON_NON_LEAF: "not-allowed-on-non-leaf",
    rc.RESULT_UNWILLING_TO_PERFORM: "unwilling-to-perform",
    rc.RESULT_SIZE_LIMIT_EXCEEDED: "size-limit-exceeded",
    rc.RESULT_REFERRAL: "referral",
}


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _subject(operation: str, dn: str | None) -> str:
    return f"LDAP {operation} of {dn!r}" if dn else f"LDAP {operation}"


def map_ldap_error(
    exc: LDAPException,
    *,
    operation: str,
    dn: str | None = None,
    uri: str | None = None,
    starting: bool = False,
    secret: str | None = None,
) -> IdsyncError:
    """The idsync error for an ldap3 exception raised by ``operation`` on ``dn``.

    ``starting`` marks a run start (test connection, import): connection problems become ``no-start-*``
    types. ``secret`` (the bind password) is scrubbed from the message should a library ever echo it.
    """
    where = f" {uri}" if uri else ""
    if isinstance(exc, LDAPOperationResult):
        code = int(exc.result) if exc.result is not None else -1
        detail = f"{exc.description or 'error'} (result {code})"
        if exc.message:
            detail += f": {exc.message}"
        message = _redact(f"{_subject(operation, dn)} failed: {detail}", secret)
        if code in CREDENTIAL_CODES:
            return FatalError(
                _redact(f"The LDAP server{where} refused the credentials of {dn!r}: {detail}", secret),
                error_type="no-start-credentials",
            )
        if code in AUTH_SETUP_CODES:
            return FatalError(
                message + " (the server wants another bind method or TLS)", error_type="no-start-auth"
            )
        if code in RETRIABLE_CODES:
            return RetriableError(
                message, error_type="no-start-connection" if starting else "cd-connection-failure"
            )
        if code == rc.RESULT_NO_SUCH_OBJECT:
            if starting:
                return FatalError(
                    f"The base DN {dn!r} does not exist on the LDAP server{where} ({detail})",
                    error_type="no-start-bad-base-dn",
                )
            return DataError(
                message, error_type="non-existent-parent" if operation == "add" else "cd-missing-object"
            )
        if code in SCHEMA_CODES:
            return DataError(message, error_type="schema-violation")
        if code in DATA_CODES:
            error_type = DATA_CODES[code]
            if starting and code == rc.RESULT_INSUFFICIENT_ACCESS_RIGHTS:
                return FatalError(message, error_type="no-start-permission")
            return DataError(message, error_type=error_type)
        if starting:
            return FatalError(message, error_type="no-start-unknown")
        return DataError(message, error_type="ldap-error")
    tls_failure = "CERTIFICATE_VERIFY_FAILED" in str(exc)
    if tls_failure or isinstance(exc, LDAPSSLConfigurationError | LDAPStartTLSError):
        return FatalError(
            _redact(f"TLS to the LDAP server{where} failed: {exc}", secret), error_type="no-start-tls"
        )
    if isinstance(exc, LDAPCommunicationError | LDAPResponseTimeoutError | LDAPMaximumRetriesError):
        return RetriableError(
            _redact(f"Cannot reach the LDAP server{where} ({_subject(operation, dn)}): {exc}", secret),
            error_type="no-start-connection" if starting else "cd-connection-failure",
        )
    # Client-side refusals (invalid filter value, bad DN syntax caught by ldap3, ...): the data is at fault.
    message = _redact(f"{_subject(operation, dn)} failed: {type(exc).__name__}: {exc}", secret)
    if starting:
        return FatalError(message, error_type="no-start-unknown")
    return DataError(message, error_type="ldap-error")
