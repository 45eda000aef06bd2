"""Configuration of the Kafka topic connector (``kind: kafka``): where the topic is, how to read it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from schemas.config import ConnectorConfigBase

#: Kafka's legal topic names (no ":" and no ",", which the watermark relies on).
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: ``{field}`` in a DN template; a field may be nested (``name.first``).
DN_FIELD = re.compile(r"\{([^{}]+)\}")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class KafkaConnectorConfig(ConnectorConfigBase):
    """An external Kafka topic (a Debezium change stream, or JSON objects) as a connected system."""

    # A password must never come back in the validation error that rejects a config.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["kafka"]
    #: ``host:port`` of one or more brokers (a list, or one comma-separated string).
    bootstrap_servers: list[str] = Field(min_length=1)
    topic: str
    #: ``debezium``: Debezium change events (op/before/after/source, with or without the schema/payload
    #: wrapper). ``json``: each record value is the object's full image; a null value deletes it.
    envelope: Literal["debezium", "json"] = "debezium"
    #: Field(s) of the record image holding the anchor; several are joined by ``anchor_separator``.
    anchor: list[str] = Field(default_factory=list)
    #: The record key (its UTF-8 text; a JSON string or number key is unquoted) is the anchor.
    anchor_from_key: bool = False
    anchor_separator: str = Field(default="|", min_length=1)
    #: Object type of every object, unless ``object_type_field`` is set.
    object_type: str = Field(default="person", min_length=1)
    #: Field naming each object's type; a record without it is an import failure.
    object_type_field: str | None = None
    #: Attribute name -> field of the image (renames and selects). Default: every field, under its name.
    attributes: dict[str, str] | None = None
    #: DN template over fields of the image: ``uid={uid},ou=people,dc=example,dc=org`` (values escaped).
    dn_template: str | None = None

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: CA bundle for SSL / SASL_SSL; the broker certificate and host name are always verified.
    ssl_cafile: Path | None = None

    client_id: str = Field(default="idsync", min_length=1)
    request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    #: A partition that is below its end offset yet returns nothing for this long fails the run
    #: (retriable): an import never hangs forever on a broker that stopped serving.
    stall_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    #: Records fetched per round trip; a delta import or follow emits a Checkpoint after each fetch.
    max_records: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, v: list[str]) -> list[str]:
        for server in v:
            m = _HOST_PORT.match(server)
            if m is None or not 0 < int(m.group(2)) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not TOPIC_NAME.match(v) or v in (".", ".."):
            raise ValueError("not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')")
        return v

    @field_validator("anchor", mode="before")
    @classmethod
    def _anchor_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("anchor")
    @classmethod
    def _anchor_fields(cls, v: list[str]) -> list[str]:
        if any(not f.strip() for f in v):
            raise ValueError("anchor field names must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("an anchor field is named twice")
        return v

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if not v:
                raise ValueError("map at least one attribute, or leave attributes out to import every field")
            empty = sorted(k for k, f in v.items() if not k.strip() or not f.strip())
            if empty:
                raise ValueError(f"attribute and field names must not be empty: {empty}")
        return v

    @field_validator("dn_template")
    @classmethod
    def _dn_template(cls, v: str | None) -> str | None:
        if v is not None and not DN_FIELD.search(v):
            raise ValueError("the DN template names no {field}: every object would get the same DN")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConnectorConfig:
        if bool(self.anchor) == self.anchor_from_key:
            raise ValueError("give exactly one of anchor (field names) and anchor_from_key: true")
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or not self.username or self.password is None):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism, username and password")
        if not sasl and (self.sasl_mechanism or self.username or self.password is not None):
            raise ValueError("sasl_mechanism, username and password need security_protocol SASL_*")
        if self.ssl_cafile is not None:
            if not self.security_protocol.endswith("SSL"):
                raise ValueError("ssl_cafile needs security_protocol SSL or SASL_SSL")
            if not self.ssl_cafile.is_file():
                raise ValueError(f"ssl_cafile {str(self.ssl_cafile)!r} not found")
        return self

    def display(self) -> str:
        """Where the topic is, for messages (never a credential)."""
        return f"topic {self.topic!r} on {','.join(self.bootstrap_servers)}"
