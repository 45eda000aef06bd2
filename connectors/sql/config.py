"""Configuration of the Generic SQL connector (``kind: sql``): a database URL and its object types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from schemas.config import ConnectorConfigBase


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MultiValuedConfig(_Section):
    """A multi-valued attribute held in a child table: one row per value."""

    child_table: str
    #: Schema (MySQL/MariaDB: database) of the child table; default: the object type's schema.
    child_schema: str | None = None
    #: Column of the child table that holds the owning row's anchor value.
    child_key: str
    #: Column that holds one value.
    value: str
    #: Column naming the attribute, for one table shared by several attributes (name/value rows).
    attribute: str | None = None
    #: What ``attribute`` holds for this attribute; default: the attribute's name.
    attribute_value: str | None = None

    @model_validator(mode="after")
    def _attribute_value_needs_column(self) -> MultiValuedConfig:
        if self.attribute_value is not None and self.attribute is None:
            raise ValueError("attribute_value needs the attribute column that holds it")
        return self


class ChangeTableConfig(_Section):
    """A trigger-fed change log: one row per insert/update/delete of the object table."""

    table: str
    #: Default: the object type's schema.
    schema_: str | None = Field(default=None, alias="schema")
    #: Monotonic id (serial / AUTO_INCREMENT / INTEGER PRIMARY KEY AUTOINCREMENT).
    id_column: str = "change_id"
    anchor_column: str = "anchor"
    #: 'I', 'U' or 'D'.
    op_column: str = "op"
    #: Change rows whose transaction commits after rows with higher ids (concurrent writers) are still
    #: seen when their id is within this many ids of the highest id read so far.
    late_commit_window: int = Field(default=1000, ge=0, le=1_000_000)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ObjectTypeConfig(_Section):
    """One object type: the table (or read-only query) whose rows are its objects."""

    table: str | None = None
    #: A SELECT whose rows are the objects (read-only: no export). Mutually exclusive with ``table``.
    query: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    #: Column holding the anchor: unique and immutable (primary key, employee id, UUID).
    anchor: str
    #: Attribute name -> column. Default: every column, under its own name.
    columns: dict[str, str] | None = None
    multi_valued: dict[str, MultiValuedConfig] = Field(default_factory=dict)
    #: Column holding a distinguished name: imported as the object's DN and set by a rename export.
    dn_column: str | None = None
    #: Delta by a monotonic column (updated_at, rowversion). Cannot see deletes.
    watermark_column: str | None = None
    #: Delta by a trigger-fed change table (a table name, or its full settings). Sees deletes.
    change_table: ChangeTableConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("change_table", mode="before")
    @classmethod
    def _table_name(cls, v: object) -> object:
        return {"table": v} if isinstance(v, str) else v

    @field_validator("query")
    @classmethod
    def _query(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().rstrip(";").strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ObjectTypeConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table, query")
        if self.watermark_column is not None and self.change_table is not None:
            raise ValueError("give at most one of watermark_column, change_table")
        both = set(self.columns or {}) & set(self.multi_valued)
        if both:
            raise ValueError(f"attributes {sorted(both)} are both in columns and in multi_valued")
        return self

    @property
    def has_delta(self) -> bool:
        return self.watermark_column is not None or self.change_table is not None


class SqlConnectorConfig(ConnectorConfigBase):
    """A SQL database through SQLAlchemy 2 (PostgreSQL, MariaDB/MySQL, SQLite, ...), like MIM's GSQL MA."""

    # A password pasted into the URL must not come back in the validation error that rejects it.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["sql"]
    #: SQLAlchemy URL without the password: postgresql+psycopg://idsync@127.0.0.1:5432/hr.
    url: str
    password: SecretStr | None = None
    object_types: dict[str, ObjectTypeConfig] = Field(min_length=1)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    #: How long a statement waits for a lock held by another session before failing (retriable, cd-busy).
    lock_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    pool_size: int = Field(default=2, ge=1, le=32)
    max_overflow: int = Field(default=3, ge=0, le=32)
    pool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: Rows fetched per round trip, and anchors per child-table lookup.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    #: A delta import emits a Checkpoint after about this many rows (and always at its end).
    checkpoint_every: int = Field(default=1000, ge=1, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _password_out_of_url(cls, data: object) -> object:
        """A password written into the URL moves to ``password`` (an explicit ``password`` wins).

        Rejecting it instead would echo it: validation errors carry the input value.
        """
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        try:
            url = make_url(data["url"])
        except ArgumentError:
            return data
        if url.password is None:
            return data
        moved = dict(data)
        moved["url"] = url._replace(password=None).render_as_string(hide_password=False)
        if moved.get("password") is None:
            moved["password"] = str(url.password)
        return moved

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            make_url(v)
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL (dialect+driver://user@host:port/database)") from None
        return v

    @model_validator(mode="after")
    def _delta_everywhere_or_nowhere(self) -> SqlConnectorConfig:
        with_delta = sorted(n for n, t in self.object_types.items() if t.has_delta)
        if with_delta and len(with_delta) != len(self.object_types):
            without = sorted(set(self.object_types) - set(with_delta))
            raise ValueError(
                f"object types {without} have neither watermark_column nor change_table while {with_delta} "
                "do: a delta import would never see their changes; configure a delta source for every "
                "object type or for none"
            )
        return self

    @property
    def has_delta(self) -> bool:
        return all(t.has_delta for t in self.object_types.values())

    def sqlalchemy_url(self) -> URL:
        """The URL with the password injected (never render it without ``hide_password``)."""
        url = make_url(self.url)
        if self.password is not None:
            url = url.set(password=self.password.get_secret_value())
        return url

    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)
