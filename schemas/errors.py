"""The one exception tree of idsync. Library exceptions are translated into these at the boundary."""

from __future__ import annotations


class IdsyncError(Exception):
    """Base of every idsync error."""

    #: MIM-style error type shown to operators (``cd-missing-object``, ``schema-violation``, ...).
    error_type: str = "idsync-error"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class RetriableError(IdsyncError):
    """A transient failure (server down, busy, timeout): try again later, nothing is wrong with the data."""

    error_type = "cd-connection-failure"
    #: The server's own hint (Retry-After) in seconds: export workers wait at least this long.
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, error_type: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, error_type=error_type)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class FatalError(IdsyncError):
    """The run cannot go on (bad config, credentials refused, state corrupted)."""

    error_type = "fatal"


class DataError(IdsyncError):
    """One object is wrong (malformed record, schema violation): report it, go on with the others."""

    error_type = "data-error"


class ConfigError(FatalError):
    """The configuration file is invalid; the message names the field path."""

    error_type = "config-error"
