"""Configuration of the SCIM 2.0 connector (``kind: scim``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.scim.paths import DEFAULT_ATTRIBUTES, DEFAULT_MATCH_PATH, ScimPath
from schemas.config import ConnectorConfigBase


class ScimObjectType(BaseModel):
    """How one idsync object type maps onto a SCIM resource type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: SCIM resource type name (``User``, ``Group`` or one the server lists under /ResourceTypes).
    resource_type: str = Field(min_length=1)
    #: Endpoint relative to base_url (``/Users``); default: from /ResourceTypes (``/Users``, ``/Groups``).
    endpoint: str | None = Field(default=None, pattern=r"^/[^/?#]+$")
    #: Flat idsync attribute name -> SCIM path; default: the built-in mapping of User / Group.
    attributes: dict[str, str] | None = None
    #: idsync attribute whose value finds an existing resource after a 409 on create; default: the one
    #: mapped to ``userName`` (User) or ``displayName`` (Group).
    match_attribute: str | None = None

    @field_validator("attributes")
    @classmethod
    def _paths(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("map at least one attribute")
        for name, path in v.items():
            if not name:
                raise ValueError("attribute names must not be empty")
            try:
                ScimPath.parse(path)
            except ValueError as exc:
                raise ValueError(f"attribute {name!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _known_defaults(self) -> ScimObjectType:
        if self.attributes is None and self.resource_type not in DEFAULT_ATTRIBUTES:
            raise ValueError(
                f"resource type {self.resource_type!r} has no default mapping: give 'attributes'"
            )
        mapping = self.mapping()
        if self.match_attribute is not None and self.match_attribute not in mapping:
            raise ValueError(f"match_attribute {self.match_attribute!r} is not a mapped attribute")
        return self

    def mapping(self) -> dict[str, str]:
        """idsync attribute -> SCIM path, defaults applied."""
        if self.attributes is not None:
            return dict(self.attributes)
        return dict(DEFAULT_ATTRIBUTES[self.resource_type])

    def match(self) -> str | None:
        """The idsync attribute used to find an existing resource after a 409 (None: no conversion)."""
        if self.match_attribute is not None:
            return self.match_attribute
        wanted = DEFAULT_MATCH_PATH.get(self.resource_type)
        if wanted is None:
            return None
        return next((n for n, p in self.mapping().items() if p.strip().lower() == wanted.lower()), None)


def _default_object_types() -> dict[str, ScimObjectType]:
    return {
        "person": ScimObjectType(resource_type="User"),
        "group": ScimObjectType(resource_type="Group"),
    }


class ScimConnectorConfig(ConnectorConfigBase):
    """A SCIM 2.0 service provider (RFC 7643 / 7644) over HTTP(S)."""

    kind: Literal["scim"]
    #: The SCIM root, e.g. ``https://idp.example.com/scim/v2`` (endpoints are appended to it).
    base_url: str = Field(pattern=r"^https?://[^/?#]+")
    #: Bearer token (RFC 6750). Give either a token or username + password (HTTP basic), or neither.
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    verify_tls: bool = True
    #: PEM file of the CA(s) that signed the server certificate (default: the system's trust store).
    ca_file: Path | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds to wait for a response (each page of an import, each export request).
    timeout_s: float = Field(default=60.0, gt=0)
    #: ``count`` asked per page of a full import; servers may return fewer.
    page_size: int = Field(default=100, ge=1, le=10000)
    object_types: dict[str, ScimObjectType] = Field(default_factory=_default_object_types)
    #: Use SCIM Bulk (RFC 7644 §3.7) for batches when the server advertises it.
    use_bulk: bool = True
    #: A full import waits out a 429/503 Retry-After of at most this many seconds (then fails retriable).
    import_max_retry_after_s: float = Field(default=30.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        if "?" in v or "#" in v:
            raise ValueError("must not carry a query or a fragment")
        return v.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError("file not found")
        return v

    @field_validator("object_types")
    @classmethod
    def _some_types(cls, v: dict[str, ScimObjectType]) -> dict[str, ScimObjectType]:
        if not v:
            raise ValueError("configure at least one object type")
        return v

    @model_validator(mode="after")
    def _auth(self) -> ScimConnectorConfig:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either token (bearer) or username + password (basic), not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic authentication needs both username and password")
        return self
