"""The configuration file: connectors, metaverse object types, inbound and outbound rules.

One YAML file, validated at startup (``streams.config.load_config``). Anything wrong names its field path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z][A-Za-z0-9_-]*)\}")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- connectors
class ConnectorConfigBase(_Config):
    """What every connector's config model has. Each kind subclasses it with ``kind: Literal["<kind>"]``.

    Built-in kinds are registered below; third-party kinds register through the ``idsync.connectors``
    entry point (``connectors.registry``), which calls :func:`register_connector_config`.
    """

    kind: str


_CONNECTOR_CONFIGS: dict[str, type[ConnectorConfigBase]] = {}


def _kind_of(model: type[ConnectorConfigBase]) -> str:
    field = model.model_fields.get("kind")
    args: tuple[object, ...] = tuple(getattr(field.annotation, "__args__", ())) if field is not None else ()
    kind = args[0] if len(args) == 1 else None
    if not isinstance(kind, str):
        raise TypeError(f"{model.__name__}.kind must be annotated Literal['<kind>']")
    return kind


def register_connector_config(model: type[ConnectorConfigBase]) -> str:
    """Make a connector kind's config model known to the config loader; returns the kind."""
    kind = _kind_of(model)
    known = _CONNECTOR_CONFIGS.get(kind)
    if known is not None and known is not model:
        raise ValueError(f"connector kind {kind!r} is registered twice ({known.__name__}, {model.__name__})")
    _CONNECTOR_CONFIGS[kind] = model
    return kind


def connector_config_models() -> dict[str, type[ConnectorConfigBase]]:
    """Every registered connector kind and its config model."""
    return dict(_CONNECTOR_CONFIGS)


class CsvConnectorConfig(ConnectorConfigBase):
    """A CSV file (an HR feed): full import, one row per object."""

    kind: Literal["csv"]
    path: Path
    object_type: str = "person"
    anchor: str = Field(description="Column that holds the immutable anchor (e.g. employee_id)")
    delimiter: str = ","
    encoding: str = "utf-8"
    #: Columns whose values hold several values separated by this character.
    multi_value_separator: str | None = None
    multi_valued: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError("file not found")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("must be a single character")
        return v


class LdapConnectorConfig(ConnectorConfigBase):
    """An LDAP directory (OpenLDAP, 389-DS, ...), through ldap3."""

    kind: Literal["ldap"]
    uri: str = Field(pattern=r"^ldaps?://")
    bind_dn: str | None = None
    password: SecretStr | None = None
    base_dn: str
    #: Object types this connector imports, mapped to their LDAP object class.
    object_classes: dict[str, str] = Field(default_factory=lambda: {"person": "inetOrgPerson"})
    anchor_attribute: str = "entryUUID"
    page_size: int = Field(default=500, ge=1, le=10000)
    start_tls: bool = False
    verify_tls: bool = True
    ca_file: Path | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Attributes requested on import; None = all user attributes.
    attributes: list[str] | None = None
    #: Create missing parent containers (organizationalUnit) when an add fails with no-such-object.
    create_parents: bool = True


register_connector_config(CsvConnectorConfig)
register_connector_config(LdapConnectorConfig)

#: A validated connector config: an instance of the model registered for its kind.
ConnectorConfig = ConnectorConfigBase


# --------------------------------------------------------------------------- metaverse
class MVAttributeConfig(_Config):
    multi_valued: bool = False


class DeletionRuleConfig(_Config):
    """When a metaverse object is deleted (MIM's object deletion rule)."""

    rule: Literal["last-connector", "source-disconnects"] = "last-connector"
    #: For ``source-disconnects``: connectors whose disconnection deletes the metaverse object.
    sources: list[str] = Field(default_factory=list)


class MVObjectTypeConfig(_Config):
    attributes: dict[str, MVAttributeConfig] = Field(default_factory=dict)
    deletion: DeletionRuleConfig = Field(default_factory=DeletionRuleConfig)


# --------------------------------------------------------------------------- inbound
class ConditionConfig(_Config):
    """A clause of a connector filter or scoping filter (operators as in Entra Connect)."""

    attribute: str
    operator: Literal[
        "equal", "notequal", "isnull", "isnotnull", "startswith", "endswith", "contains", "isin", "isnotin"
    ]
    value: str | list[str] | None = None

    @model_validator(mode="after")
    def _value_needed(self) -> ConditionConfig:
        if self.operator in ("isnull", "isnotnull"):
            return self
        if self.value is None:
            raise ValueError(f"operator {self.operator!r} needs a value")
        if self.operator in ("isin", "isnotin") and not isinstance(self.value, list):
            raise ValueError(f"operator {self.operator!r} needs a list value")
        return self


Normalizer = Literal["lower", "trim", "nfc"]
_DEFAULT_NORMALIZE: tuple[Normalizer, ...] = ("trim", "nfc")


class JoinCriterionConfig(_Config):
    cs: str = Field(description="Connector-space attribute")
    mv: str = Field(description="Metaverse attribute")
    normalize: list[Normalizer] = Field(default_factory=lambda: list(_DEFAULT_NORMALIZE))


class ImportFlowConfig(_Config):
    """An import attribute flow: connector-space value(s) -> one metaverse attribute."""

    mv: str
    source: str | None = None
    constant: str | list[str] | None = None
    #: A template over CS attributes: "{first_name} {last_name}".
    template: str | None = None
    #: Only flow when the metaverse attribute has no value yet (MIM "initial flow only").
    initial_only: bool = False
    #: Flow an empty source as null (otherwise an empty source contributes nothing).
    allow_null: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> ImportFlowConfig:
        kinds = [k for k in (self.source, self.constant, self.template) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of source, constant, template")
        return self


class InboundRuleConfig(_Config):
    """How one connector's objects of one type reach the metaverse: filter, join, projection, flows."""

    connector: str
    object_type: str = "person"
    mv_type: str = "person"
    #: Connector filter: objects matching ANY clause group (AND within a group) become filtered disconnectors.
    filter: list[list[ConditionConfig]] = Field(default_factory=list)
    #: One join rule (mapping group): all criteria must match.
    join: list[JoinCriterionConfig] = Field(default_factory=list)
    project: bool = False
    flows: list[ImportFlowConfig] = Field(default_factory=list)
    #: Rank of this connector in precedence for the attributes it flows (lower wins).
    precedence: int = Field(default=100, ge=0)


# --------------------------------------------------------------------------- outbound
class ExportFlowConfig(_Config):
    """An export attribute flow: metaverse value(s) -> one target attribute."""

    target: str
    source: str | None = None
    constant: str | list[str] | None = None
    template: str | None = None
    #: Export an empty metaverse value as a delete of the target attribute.
    allow_null: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ExportFlowConfig:
        kinds = [k for k in (self.source, self.constant, self.template) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of source, constant, template")
        return self


class DisableActionConfig(_Config):
    """Disable instead of delete: set attributes and/or move under another container."""

    set: dict[str, list[str]] = Field(default_factory=dict)
    move_to: str | None = None


class DeprovisionConfig(_Config):
    action: Literal["delete", "disconnect", "disable"] = "delete"
    disable: DisableActionConfig | None = None

    @model_validator(mode="after")
    def _disable_needs_body(self) -> DeprovisionConfig:
        if self.action == "disable" and self.disable is None:
            raise ValueError("action 'disable' needs a 'disable' block (set and/or move_to)")
        return self


class OutboundRuleConfig(_Config):
    """Provisioning into one target connector: scope, DN template, export flows, deprovisioning."""

    connector: str
    mv_type: str = "person"
    object_type: str = "person"
    #: Scoping filter: OR of AND-ed clause groups; empty = every object of mv_type.
    scope: list[list[ConditionConfig]] = Field(default_factory=list)
    #: DN template over metaverse attributes: "uid={uid},ou=people,dc=example,dc=org".
    dn: str
    flows: list[ExportFlowConfig] = Field(default_factory=list)
    deprovision: DeprovisionConfig = Field(default_factory=DeprovisionConfig)

    @field_validator("dn")
    @classmethod
    def _template(cls, v: str) -> str:
        if not _TEMPLATE_FIELD.search(v):
            raise ValueError("DN template names no metaverse attribute, every object would get one DN")
        return v


# --------------------------------------------------------------------------- pipeline
class PipelineConfig(_Config):
    partitions: int = Field(default=4, ge=1, le=1024)
    batch_size: int = Field(default=2000, ge=1, le=100000)
    batch_window_ms: int = Field(default=20, ge=1, le=10000)


class IdsyncConfig(_Config):
    """The whole configuration file."""

    name: str = Field(default="idsync", pattern=_NAME)
    connectors: dict[str, ConnectorConfig]
    metaverse: dict[str, MVObjectTypeConfig] = Field(default_factory=lambda: {"person": MVObjectTypeConfig()})
    inbound: list[InboundRuleConfig] = Field(default_factory=list)
    outbound: list[OutboundRuleConfig] = Field(default_factory=list)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @field_validator("connectors", mode="before")
    @classmethod
    def _kinds(cls, v: object) -> object:
        """Validate each connector with the model registered for its ``kind`` (errors keep their path)."""
        if not isinstance(v, dict):
            return v
        out: dict[str, object] = {}
        for name, raw in v.items():
            if not isinstance(name, str) or not re.match(_NAME, name):
                raise ValueError(f"connector name {name!r} must match {_NAME}")
            if isinstance(raw, ConnectorConfigBase):
                out[name] = raw
                continue
            kind = raw.get("kind") if isinstance(raw, dict) else None
            model = _CONNECTOR_CONFIGS.get(kind) if isinstance(kind, str) else None
            if model is None:
                # Let pydantic report it, so the error names connectors.<name>.kind and the known kinds.
                kinds: Any = Literal.__getitem__(tuple(sorted(_CONNECTOR_CONFIGS)))
                TypeAdapter(dict[str, dict[Literal["kind"], kinds]]).validate_python({name: {"kind": kind}})
            out.update(TypeAdapter(dict[str, model]).validate_python({name: raw}))  # type: ignore[valid-type]
        return out

    @model_validator(mode="after")
    def _references(self) -> IdsyncConfig:
        for i, rule in enumerate(self.inbound):
            if rule.connector not in self.connectors:
                raise ValueError(f"inbound[{i}].connector: unknown connector {rule.connector!r}")
            if rule.mv_type not in self.metaverse:
                raise ValueError(f"inbound[{i}].mv_type: unknown metaverse object type {rule.mv_type!r}")
            if not rule.join and not rule.project:
                raise ValueError(f"inbound[{i}]: neither join nor project, its objects could never connect")
        for i, out in enumerate(self.outbound):
            if out.connector not in self.connectors:
                raise ValueError(f"outbound[{i}].connector: unknown connector {out.connector!r}")
            if out.mv_type not in self.metaverse:
                raise ValueError(f"outbound[{i}].mv_type: unknown metaverse object type {out.mv_type!r}")
        seen: set[tuple[str, str]] = set()
        for i, rule in enumerate(self.inbound):
            key = (rule.connector, rule.object_type)
            if key in seen:
                raise ValueError(f"inbound[{i}]: a second rule for {key[0]}/{key[1]}")
            seen.add(key)
        return self

    def inbound_rule(self, connector: str, object_type: str) -> InboundRuleConfig | None:
        for rule in self.inbound:
            if rule.connector == connector and rule.object_type == object_type:
                return rule
        return None

    def outbound_rules(self, mv_type: str) -> list[OutboundRuleConfig]:
        return [r for r in self.outbound if r.mv_type == mv_type]

    def export_targets(self) -> set[str]:
        return {r.connector for r in self.outbound}


def template_fields(template: str) -> list[str]:
    """Attribute names a ``{attr}`` template refers to."""
    return _TEMPLATE_FIELD.findall(template)
