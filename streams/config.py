"""Loading the configuration file: YAML, ``${ENV}`` substitution, validation with field paths."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from connectors import registry
from schemas.config import IdsyncConfig
from schemas.errors import ConfigError

log = logging.getLogger("idsync.config")

#: LDAP object classes (lower case -> name, member attribute) whose entries must hold a member (RFC 4519):
#: an add without one fails.
MEMBER_REQUIRED = {
    "groupofnames": ("groupOfNames", "member"),
    "groupofuniquenames": ("groupOfUniqueNames", "uniqueMember"),
}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                raise ConfigError(f"{path}: environment variable {m.group(1)} is not set")
            return value

        return _ENV.sub(repl, node)
    return node


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in connectors are relative to the config file, not the working directory."""
    for conn in (data.get("connectors") or {}).values():
        if isinstance(conn, dict):
            for key in ("path", "ca_file", "export_path", "changes_path"):
                if isinstance(conn.get(key), str) and not os.path.isabs(conn[key]):
                    conn[key] = str(base / conn[key])


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``connectors.hr.path: file not found``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def parse_config(data: Any, base: Path) -> IdsyncConfig:
    """Validate a parsed config document."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping at top level")
    registry.load()  # third-party connector kinds become valid config
    data = _substitute(data, "")
    _resolve_paths(data, base)
    try:
        return IdsyncConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: Path) -> IdsyncConfig:
    """Read and validate the configuration file; ``ConfigError`` names the field path and the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_config(data, path.resolve().parent)
    for line in advice(config):
        log.warning("%s: %s", path, line)
    return config


def advice(config: IdsyncConfig) -> list[str]:
    """What a valid configuration probably gets wrong, one line each (``idsync check-config`` prints them;
    loading the configuration logs them as warnings): an outbound rule adding entries of a class that must
    hold a member (``groupOfNames``, ``groupOfUniqueNames``) whose add does not wait for one
    (``requires``), or that no flow gives one at all."""
    lines = []
    for i, rule in enumerate(config.outbound):
        classes = {
            str(v).lower()
            for f in rule.flows
            if f.target.lower() == "objectclass" and f.constant is not None
            for v in ([f.constant] if isinstance(f.constant, str) else f.constant)
        }
        for key in sorted(classes & MEMBER_REQUIRED.keys()):
            cls, attr = MEMBER_REQUIRED[key]
            where = f"outbound[{i}] ({rule.connector}, {rule.object_type})"
            if not any(f.target.lower() == attr.lower() for f in rule.flows):
                lines.append(
                    f"{where}: no flow exports {attr}, which {cls} entries must hold: every add will fail"
                )
            elif not any(a.lower() == attr.lower() for a in rule.requires):
                lines.append(
                    f"{where}: {cls} entries must hold {attr}; without requires: [{attr}] an entry "
                    f"provisioned before any {attr} exists in the target fails its add (schema-violation)"
                )
    return lines
