"""Translation of HTTP / SCIM errors (RFC 7644 §3.12) into idsync errors carrying MIM error types."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from schemas.errors import DataError, FatalError, IdsyncError, RetriableError


class ScimRetriableError(RetriableError):
    """A retriable SCIM failure; ``retry_after_s`` is the server's Retry-After (429 / 503) in seconds.

    Export workers that see ``retry_after_s`` should wait at least that long before the next attempt
    (``getattr(exc, "retry_after_s", None)`` works on any RetriableError).
    """

    def __init__(self, message: str, *, error_type: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, error_type=error_type)
        self.retry_after_s = retry_after_s


#: scimType (RFC 7644 Table 9) -> MIM-ish error type of a DataError.
SCIM_TYPES: dict[str, str] = {
    "invalidvalue": "schema-violation",
    "invalidsyntax": "schema-violation",
    "invalidpath": "schema-violation",
    "notarget": "schema-violation",
    "invalidfilter": "schema-violation",
    "mutability": "constraint-violation",
    "uniqueness": "cd-existing-object",
    "toomany": "constraint-violation",
    "sensitive": "permission-issue",
    "invalidvers": "scim-bad-request",
}
#: Statuses meaning "cannot serve now".
RETRIABLE_STATUSES = frozenset({408, 429, 502, 503, 504})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 §10.2.3) as seconds: a delay or an HTTP date; None when absent or garbage."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def scim_error_body(response: httpx.Response) -> tuple[str | None, str]:
    """``(scimType, detail)`` of an error response (RFC 7644 §3.12); detail falls back to the reason."""
    scim_type: str | None = None
    detail = ""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw_type = body.get("scimType")
        scim_type = raw_type if isinstance(raw_type, str) else None
        raw_detail = body.get("detail")
        detail = raw_detail if isinstance(raw_detail, str) else ""
    if not detail:
        detail = response.reason_phrase or ""
    return scim_type, _one_line(detail)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def map_status(
    status: int,
    *,
    scim_type: str | None,
    detail: str,
    retry_after: str | None,
    operation: str,
    target: str,
    base_url: str,
    starting: bool = False,
    secrets: tuple[str, ...] = (),
) -> IdsyncError:
    """The idsync error for an error status of ``operation`` (``PATCH``, ``POST``, ...) on ``target``.

    ``starting`` marks a run start (test connection, import): failures there carry ``no-start-*`` types.
    """
    kind = f" ({scim_type})" if scim_type else ""
    message = redact(f"SCIM {operation} {target} failed: HTTP {status}{kind}: {detail}", secrets)
    if status == 401:
        return FatalError(
            redact(f"The SCIM server {base_url} refused the credentials (HTTP 401): {detail}", secrets),
            error_type="no-start-credentials",
        )
    if status == 403:
        if starting:
            return FatalError(
                redact(f"The SCIM server {base_url} refused access (HTTP 403): {detail}", secrets),
                error_type="no-start-credentials",
            )
        return DataError(message, error_type="permission-issue")
    if status in RETRIABLE_STATUSES:
        wait = retry_after_seconds(retry_after)
        if wait is not None:
            message += f" (retry after {wait:.0f}s)"
        error_type = "no-start-connection" if starting else "cd-throttled" if status == 429 else "cd-busy"
        return ScimRetriableError(message, error_type=error_type, retry_after_s=wait)
    if status == 412:
        return ScimRetriableError(message, error_type="cd-concurrent-modification")
    if starting:
        if status == 404:
            return FatalError(
                redact(f"No SCIM service at {base_url} ({operation} {target}: HTTP 404): {detail}", secrets),
                error_type="no-start-bad-base-url",
            )
        return FatalError(message, error_type="no-start-unknown")
    if status == 404:
        return DataError(message, error_type="cd-missing-object")
    if status == 409:
        return DataError(
            message, error_type="cd-existing-object" if operation == "POST" else "constraint-violation"
        )
    if status == 400:
        error_type = SCIM_TYPES.get((scim_type or "").lower(), "scim-bad-request")
        if error_type == "cd-existing-object" and operation != "POST":
            error_type = "constraint-violation"
        return DataError(message, error_type=error_type)
    if status == 413:
        return DataError(message, error_type="scim-payload-too-large")
    if status == 501:
        return DataError(message, error_type="scim-not-implemented")
    return DataError(message, error_type="scim-error")


def map_response(
    response: httpx.Response,
    *,
    operation: str,
    target: str,
    base_url: str,
    starting: bool = False,
    secrets: tuple[str, ...] = (),
) -> IdsyncError:
    """``map_status`` for an httpx response."""
    scim_type, detail = scim_error_body(response)
    return map_status(
        response.status_code,
        scim_type=scim_type,
        detail=detail,
        retry_after=response.headers.get("Retry-After"),
        operation=operation,
        target=target,
        base_url=base_url,
        starting=starting,
        secrets=secrets,
    )


def map_transport(
    exc: httpx.HTTPError,
    *,
    operation: str,
    target: str,
    base_url: str,
    starting: bool = False,
    secrets: tuple[str, ...] = (),
) -> IdsyncError:
    """The idsync error for a transport failure (refused, timed out, TLS) of ``operation`` on ``target``."""
    text = _one_line(str(exc) or type(exc).__name__)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text.upper().split(":")[0]:
        return FatalError(
            redact(f"TLS to the SCIM server {base_url} failed: {text}", secrets), error_type="no-start-tls"
        )
    return ScimRetriableError(
        redact(f"Cannot reach the SCIM server {base_url} ({operation} {target}): {text}", secrets),
        error_type="no-start-connection" if starting else "cd-connection-failure",
    )
