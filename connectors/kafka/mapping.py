"""From one Kafka record (key and value bytes) to an upsert or a delete of one object.

Field values become attributes by the JSON Lines connector's rules (docs/connectors/files.md): a string is
one value, a number or boolean is one value as JSON writes it, an array of scalars is multi-valued, a
nested object is flattened into dotted names, ``null`` / ``[]`` / ``{}`` are no value. Anchor, object type
and DN template name fields of that flattened image; ``attributes`` then renames and selects.

Nothing here raises anything but ``Bad``: the caller turns it into an ``ImportFailure`` located by
topic/partition/offset and goes on with the next record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ldap3.utils.dn import escape_rdn

from connectors.jsonimage import Bad, flatten, reject_constant, single
from connectors.kafka.config import DN_FIELD, KafkaConnectorConfig
from schemas.records import Attrs

RAW_MAX = 500


@dataclass(frozen=True, slots=True)
class Upsert:
    """The object's full image after the change (Debezium c/u/r, or a plain JSON object)."""

    anchor: str
    object_type: str
    attributes: Attrs
    dn: str | None
    op: str


@dataclass(frozen=True, slots=True)
class Delete:
    """A Debezium ``d`` event, or a tombstone (null value) under the object's key."""

    anchor: str
    object_type: str
    dn: str | None
    tombstone: bool


Change = Upsert | Delete


def raw_text(value: bytes | None) -> str | None:
    return None if value is None else value[:RAW_MAX].decode("utf-8", errors="replace")


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError:
        raise Bad("import-decode-error", f"the record {what} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise Bad("import-malformed-record", f"the record {what} is not JSON: {exc}") from None


def _unwrap(data: Any) -> Any:
    """Kafka Connect's JsonConverter with schemas on wraps every key and value in {schema, payload}."""
    if isinstance(data, dict) and data.keys() == {"schema", "payload"}:
        return data["payload"]
    return data


class Mapper:
    """Decodes records of one topic by the connector's envelope and field mapping."""

    def __init__(self, config: KafkaConnectorConfig) -> None:
        self.config = config
        self._dn_fields = DN_FIELD.findall(config.dn_template or "")

    # ------------------------------------------------------------------ entry point
    def decode(self, key: bytes | None, value: bytes | None) -> Change:
        if value is None:
            return Delete(self._key_anchor(key), self.config.object_type, None, tombstone=True)
        data = _unwrap(_json(value, "value"))
        if not isinstance(data, dict):
            raise Bad(
                "import-malformed-record", f"the record value is a JSON {type(data).__name__}, not an object"
            )
        if self.config.envelope == "json":
            return self._upsert(key, data, "c")
        return self._debezium(key, data)

    def _debezium(self, key: bytes | None, event: dict[str, Any]) -> Change:
        op = event.get("op")
        if not isinstance(op, str):
            raise Bad(
                "import-malformed-record",
                "not a Debezium change event: no op field (a topic of plain objects needs envelope: json)",
            )
        if op in ("c", "r", "u"):
            after = event.get("after")
            if not isinstance(after, dict):
                raise Bad("import-malformed-record", f"Debezium {op!r} event without an 'after' object")
            return self._upsert(key, after, op)
        if op == "d":
            before = event.get("before")
            if before is not None and not isinstance(before, dict):
                raise Bad("import-malformed-record", "Debezium 'd' event whose 'before' is not an object")
            return self._delete(key, before)
        raise Bad(
            "import-unsupported-op",
            f"Debezium op {op!r} is not a row change (only c, r, u and d are; a truncate needs a full import "
            "of the source system, not of this topic)",
        )

    # ------------------------------------------------------------------ images
    def _upsert(self, key: bytes | None, obj: dict[str, Any], op: str) -> Upsert:
        cfg = self.config
        image = flatten(obj, "import-malformed-record", "the image")
        anchor = self._key_text(key) if cfg.anchor_from_key else self._image_anchor(image)
        object_type = cfg.object_type
        if cfg.object_type_field is not None:
            object_type = single(image, cfg.object_type_field, "object type", "import-missing-object-type")
        dn = self._dn(image) if cfg.dn_template is not None else None
        if cfg.attributes is None:
            attributes = image
        else:
            attributes = {a: image[f] for a, f in cfg.attributes.items() if f in image}
        return Upsert(anchor, object_type, attributes, dn, op)

    def _delete(self, key: bytes | None, before: dict[str, Any] | None) -> Delete:
        cfg = self.config
        image = flatten(before, "import-malformed-record", "the image") if before else {}
        if cfg.anchor_from_key:
            anchor = self._key_text(key)
        elif image and all(image.get(f) for f in cfg.anchor):
            anchor = self._image_anchor(image)
        else:
            # Without REPLICA IDENTITY FULL the before image may hold only the key columns, or nothing.
            anchor = self._key_anchor(key)
        object_type = cfg.object_type
        if cfg.object_type_field is not None and image.get(cfg.object_type_field):
            object_type = single(image, cfg.object_type_field, "object type", "import-missing-object-type")
        dn = None
        if cfg.dn_template is not None and all(image.get(f) for f in self._dn_fields):
            dn = self._dn(image)
        return Delete(anchor, object_type, dn, tombstone=False)

    def _image_anchor(self, image: Attrs) -> str:
        cfg = self.config
        parts = [single(image, f, "anchor", "import-missing-anchor") for f in cfg.anchor]
        return cfg.anchor_separator.join(parts)

    def _dn(self, image: Attrs) -> str:
        template = self.config.dn_template or ""

        def value(field: str) -> str:
            return str(escape_rdn(single(image, field, "DN", "import-missing-dn-field")))

        return DN_FIELD.sub(lambda m: value(m.group(1)), template)

    # ------------------------------------------------------------------ keys
    def _key_text(self, key: bytes | None) -> str:
        """The key as one anchor value: its text, a JSON string or number key unquoted."""
        if key is None:
            raise Bad("import-missing-anchor", "the record has no key (anchor_from_key is set)")
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("import-decode-error", "the record key is not UTF-8") from None
        try:
            data = _unwrap(json.loads(text, parse_constant=reject_constant))
        except (ValueError, RecursionError):
            data = text
        if isinstance(data, dict | list):
            raise Bad("import-missing-anchor", "the record key is a JSON object or array: name anchor fields")
        value = data if isinstance(data, str) else json.dumps(data)
        if not value.strip():
            raise Bad("import-missing-anchor", "the record key is empty")
        return value.strip()

    def _key_anchor(self, key: bytes | None) -> str:
        """The anchor of a delete, from its key: the anchor fields of a JSON object key (Debezium's row
        key), or the key's text when the anchor is one field or the key itself."""
        if self.config.anchor_from_key:
            return self._key_text(key)
        if key is None:
            raise Bad("import-missing-anchor", "a delete without a key: which object it deletes is unknown")
        data = _unwrap(_json(key, "key"))
        if isinstance(data, dict):
            return self._image_anchor(flatten(data, "import-malformed-record", "the key"))
        if (
            len(self.config.anchor) == 1
            and isinstance(data, str | int | float)
            and not isinstance(data, bool)
        ):
            return self._key_text(key)
        raise Bad("import-missing-anchor", f"the record key holds no anchor field {self.config.anchor}")
