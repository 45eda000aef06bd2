"""Translation of SQLAlchemy / DBAPI exceptions into idsync errors with MIM error types.

Each driver says what went wrong in its own way: psycopg by SQLSTATE (and by message text for failures
before the session exists), PyMySQL by error number, sqlite3 by its extended result code name. They are
reduced to one category, and the category decides the idsync error.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import exc as sa_exc

from schemas.errors import DataError, FatalError, IdsyncError, RetriableError

Category = Literal[
    "connection", "credentials", "bad-database", "bad-table", "bad-column", "permission", "deadlock", "busy",
    "unique", "constraint", "data", "syntax", "other",
]  # fmt: skip

_PG_CLASSES: dict[str, Category] = {
    "08": "connection",  # connection exception
    "57": "connection",  # operator intervention (admin shutdown, cannot connect now)
    "53": "busy",  # insufficient resources (too many connections, disk full)
    "28": "credentials",  # invalid authorization specification
    "23": "constraint",
    "22": "data",
    "42": "syntax",
}
_PG_STATES: dict[str, Category] = {
    "3D000": "bad-database",
    "42P01": "bad-table",
    "3F000": "bad-table",  # invalid schema name
    "42703": "bad-column",
    "42501": "permission",
    "40001": "deadlock",  # serialization failure
    "40P01": "deadlock",
    "55P03": "busy",  # lock not available
    "57014": "busy",  # statement timeout / query canceled
    "23505": "unique",
    "0A000": "data",  # feature not supported (e.g. a cast the column cannot take)
}
#: libpq messages for failures before a session exists (psycopg gives no SQLSTATE for them).
_PG_CONNECT_MESSAGES: tuple[tuple[str, Category], ...] = (
    ("password authentication failed", "credentials"),
    ("authentication failed", "credentials"),
    ("no password supplied", "credentials"),
    ("pg_hba.conf", "credentials"),
    ('role "', "credentials"),  # role "x" does not exist
    ('database "', "bad-database"),  # database "x" does not exist
)
_MYSQL_ERRNOS: dict[int, Category] = {
    1045: "credentials",  # access denied (using password: YES/NO)
    1698: "credentials",  # access denied (unix socket / no such user)
    1044: "permission",  # no access to that database
    1142: "permission",
    1143: "permission",
    1227: "permission",
    1049: "bad-database",
    1146: "bad-table",
    1054: "bad-column",
    1213: "deadlock",
    1205: "busy",  # lock wait timeout
    1040: "busy",  # too many connections
    1203: "busy",
    1969: "busy",  # max statement time exceeded
    0: "connection",
    2002: "connection",
    2003: "connection",
    2005: "connection",
    2006: "connection",  # server has gone away
    2013: "connection",  # lost connection during query
    2014: "connection",
    2055: "connection",
    1053: "connection",  # server shutdown in progress
    1062: "unique",
    1586: "unique",
    1169: "unique",
    1048: "constraint",  # column cannot be null
    1364: "constraint",  # field has no default
    1451: "constraint",
    1452: "constraint",
    1216: "constraint",
    1217: "constraint",
    1557: "constraint",
    3819: "constraint",  # check constraint (MySQL)
    4025: "constraint",  # check constraint (MariaDB)
    1406: "data",  # data too long
    1366: "data",  # incorrect value
    1292: "data",  # truncated incorrect value
    1264: "data",  # out of range
    1265: "data",  # data truncated
    1367: "data",
    1411: "data",
    3140: "data",  # invalid JSON
    1064: "syntax",
    1149: "syntax",
}
_SQLITE_PREFIXES: tuple[tuple[str, Category], ...] = (
    ("SQLITE_CONSTRAINT_UNIQUE", "unique"),
    ("SQLITE_CONSTRAINT_PRIMARYKEY", "unique"),
    ("SQLITE_CONSTRAINT_ROWID", "unique"),
    ("SQLITE_CONSTRAINT", "constraint"),
    ("SQLITE_BUSY", "busy"),
    ("SQLITE_LOCKED", "busy"),
    ("SQLITE_CANTOPEN", "bad-database"),
    ("SQLITE_NOTADB", "bad-database"),
    ("SQLITE_CORRUPT", "bad-database"),
    ("SQLITE_READONLY", "permission"),
    ("SQLITE_PERM", "permission"),
    ("SQLITE_AUTH", "permission"),
    ("SQLITE_MISMATCH", "data"),
    ("SQLITE_TOOBIG", "data"),
    ("SQLITE_RANGE", "data"),
    ("SQLITE_IOERR", "connection"),
    ("SQLITE_FULL", "busy"),
)
_SQLITE_MESSAGES: tuple[tuple[str, Category], ...] = (
    ("no such table", "bad-table"),
    ("no such column", "bad-column"),
    ("has no column named", "bad-column"),
    ("syntax error", "syntax"),
    ("unable to open database", "bad-database"),
)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _driver_detail(orig: BaseException) -> tuple[Category | None, str]:
    """The category a driver's exception names (None: not known here) and its one-line message."""
    module = type(orig).__module__.split(".")[0]
    if module == "psycopg":
        state = getattr(orig, "sqlstate", None)
        text = _one_line(str(orig))
        if isinstance(state, str) and state:
            category = _PG_STATES.get(state) or _PG_CLASSES.get(state[:2])
            return category, f"{text} (SQLSTATE {state})"
        low = text.lower()
        for needle, category in _PG_CONNECT_MESSAGES:
            if needle in low:
                return category, text
        return None, text
    if module == "pymysql":
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int):
            message = _one_line(str(args[1])) if len(args) > 1 else ""
            return _MYSQL_ERRNOS.get(args[0]), f"{message} (MySQL error {args[0]})"
        return None, _one_line(str(orig))
    if module == "sqlite3":
        name = getattr(orig, "sqlite_errorname", None)
        text = _one_line(str(orig))
        low = text.lower()
        if name == "SQLITE_ERROR" or not isinstance(name, str):
            for needle, category in _SQLITE_MESSAGES:
                if needle in low:
                    return category, text
        if isinstance(name, str):
            for prefix, category in _SQLITE_PREFIXES:
                if name.startswith(prefix):
                    return category, f"{text} ({name})"
            return None, f"{text} ({name})"
        return None, text
    return None, _one_line(str(orig))


def classify(exc: BaseException) -> tuple[Category, str]:
    """The category of a SQLAlchemy exception and a one-line description (no SQL text, no parameters)."""
    if isinstance(exc, sa_exc.NoSuchTableError):
        return "bad-table", f"table {exc} does not exist"
    if isinstance(exc, sa_exc.TimeoutError):
        return "busy", "no free connection in the pool (all busy)"
    if isinstance(exc, sa_exc.DBAPIError):
        category, detail = _driver_detail(exc.orig) if exc.orig is not None else (None, "")
        if category is None:
            if exc.connection_invalidated or isinstance(exc, sa_exc.DisconnectionError):
                category = "connection"
            elif isinstance(exc, sa_exc.IntegrityError):
                category = "constraint"
            elif isinstance(exc, sa_exc.DataError):
                category = "data"
            elif isinstance(exc, sa_exc.OperationalError):
                category = "connection"
            else:
                category = "other"
        return category, detail or type(exc.orig).__name__
    if isinstance(exc, sa_exc.StatementError):
        # A bind value the type refused before anything reached the database.
        orig = exc.orig
        detail = _one_line(str(orig)) if orig is not None else type(exc).__name__
        if isinstance(orig, ValueError | TypeError | OverflowError):
            return "data", detail
        return "other", detail
    return "other", _one_line(str(exc)) or type(exc).__name__


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.IntegrityError) and classify(exc)[0] == "unique"


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def map_sql_error(
    exc: BaseException,
    *,
    operation: str,
    subject: str,
    url: str,
    starting: bool = False,
    secret: str | None = None,
) -> IdsyncError:
    """The idsync error for a SQLAlchemy exception raised by ``operation`` on ``subject`` (a table).

    ``starting`` marks a run start (test connection, import): connection problems become ``no-start-*``.
    ``url`` is rendered without the password; ``secret`` is scrubbed should a driver ever echo it.
    """
    category, detail = classify(exc)
    detail = redact(detail, secret)
    what = f"SQL {operation} on {subject}"
    if category == "connection":
        return RetriableError(
            f"Cannot reach the database {url} ({what}): {detail}",
            error_type="no-start-connection" if starting else "cd-connection-failure",
        )
    if category == "credentials":
        return FatalError(
            f"The database {url} refused the credentials: {detail}", error_type="no-start-credentials"
        )
    if category == "bad-database":
        return FatalError(
            f"The database {url} cannot be opened: {detail}", error_type="no-start-bad-database"
        )
    if category == "bad-table":
        return FatalError(f"{what} failed, no such table: {detail}", error_type="no-start-bad-table")
    if category == "bad-column":
        return FatalError(f"{what} failed, no such column: {detail}", error_type="no-start-bad-column")
    if category == "permission":
        if starting:
            return FatalError(f"{what} is not permitted: {detail}", error_type="no-start-permission")
        return DataError(f"{what} is not permitted: {detail}", error_type="permission-issue")
    if category == "deadlock":
        return RetriableError(
            f"{what} lost a deadlock or serialization race: {detail}", error_type="cd-deadlock"
        )
    if category == "busy":
        return RetriableError(f"{what} timed out, the database is busy: {detail}", error_type="cd-busy")
    if category in ("unique", "constraint"):
        return DataError(f"{what} violates a constraint: {detail}", error_type="constraint-violation")
    if category == "data":
        return DataError(
            f"{what} has a value the column cannot hold: {detail}", error_type="schema-violation"
        )
    if category == "syntax":
        return FatalError(f"{what} is not valid SQL here: {detail}", error_type="no-start-bad-query")
    if starting:
        return FatalError(f"{what} failed: {detail}", error_type="no-start-unknown")
    return DataError(f"{what} failed: {detail}", error_type="sql-error")
