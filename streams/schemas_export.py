"""Writes the JSON Schema of every topic contract (``idsync schema export``)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from schemas.config import IdsyncConfig
from schemas.records import (
    ApproveDeletes,
    ErrorRecord,
    ExportConfirmed,
    ImportMessage,
    MVChange,
    PendingExport,
    WatermarkRecord,
)

#: topic (pattern) -> contract
CONTRACTS: dict[str, object] = {
    "import.<connector>": ImportMessage,
    "mv.changes": MVChange,
    "export.<connector>": PendingExport,
    "errors": ErrorRecord,
    "export.confirmed": ExportConfirmed,
    "watermarks": WatermarkRecord,
    "export.<connector>.approve-deletes": ApproveDeletes,
    "config": IdsyncConfig,
}


def export_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, contract in CONTRACTS.items():
        if isinstance(contract, type) and issubclass(contract, BaseModel):
            schema = contract.model_json_schema()
        else:
            schema = TypeAdapter(contract).json_schema()
        schema["$id"] = f"https://idsync.invalid/schemas/{name.replace('<connector>', 'connector')}.json"
        schema["title"] = schema.get("title") or name
        path = out / f"{name.replace('<connector>', 'connector')}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
