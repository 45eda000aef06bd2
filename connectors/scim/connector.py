"""The SCIM 2.0 connector: paged full import, PATCH/PUT exports with ETags, Bulk batches, over httpx."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from connectors.base import (
    AttributeSchema,
    ConnectorSchema,
    ExportOutcome,
    ImportedObject,
    ImportFailure,
    ObjectTypeSchema,
)
from connectors.scim import bulk
from connectors.scim.client import EventHooks, ScimClient, is_ok
from connectors.scim.config import ScimConnectorConfig
from connectors.scim.errors import scim_error_body
from connectors.scim.mapping import (
    Kind,
    ResourceMapping,
    apply_local,
    build_resource,
    flatten,
    needs_state,
    plan_patch,
    resolve_attribute,
)
from connectors.scim.paths import DEFAULT_CORE_SCHEMAS, DEFAULT_ENDPOINTS, PATCH_OP, UnmappableValue, get_ci
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, PendingExport

Syntax = Literal["string", "integer", "boolean", "binary", "reference", "datetime"]
_SYNTAX: dict[str, Syntax] = {
    "boolean": "boolean",
    "integer": "integer",
    "dateTime": "datetime",
    "binary": "binary",
    "reference": "reference",
}


class ScimConnector:
    """Connector, FullImport, Export, BatchExport, SchemaDiscovery and ConnectionCheck over one httpx client.

    The anchor is the SCIM ``id``. ``event_hooks`` are httpx event hooks (observability; tests record the
    requests with them).
    """

    def __init__(self, name: str, config: ScimConnectorConfig, *, event_hooks: EventHooks | None = None):
        self.name = name
        self.config = config
        self.http = ScimClient(config, event_hooks=event_hooks)
        self._lock = threading.Lock()
        self._mappings: dict[str, ResourceMapping] = {}
        #: Set when the server answers 501 to a PATCH it advertised: GET + PUT from then on.
        self._patch_refused = False

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ScimConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mapping(self, object_type: str, *, starting: bool = False) -> ResourceMapping:
        with self._lock:
            known = self._mappings.get(object_type)
        if known is not None:
            return known
        spec = self.config.object_types.get(object_type)
        if spec is None:
            raise DataError(
                f"Object type {object_type!r} is not configured for SCIM connector {self.name!r}",
                error_type="unknown-object-type",
            )
        types, schemas = self.http.discovered(starting=starting)
        listed = types.get(spec.resource_type.lower(), {})
        endpoint = spec.endpoint or listed.get("endpoint") or DEFAULT_ENDPOINTS.get(spec.resource_type)
        core = listed.get("schema") or DEFAULT_CORE_SCHEMAS.get(spec.resource_type)
        if not endpoint or not core:
            raise FatalError(
                f"The SCIM server {self.config.base_url} lists no resource type {spec.resource_type!r} "
                f"(object type {object_type!r}); set its endpoint and attributes",
                error_type="no-start-bad-resource-type",
            )
        attributes = {
            name: resolve_attribute(name, raw, str(core), schemas) for name, raw in spec.mapping().items()
        }
        mapping = ResourceMapping(
            object_type=object_type,
            resource_type=spec.resource_type,
            endpoint="/" + str(endpoint).strip("/"),
            core_schema=str(core),
            attributes=attributes,
            match=spec.match(),
        )
        with self._lock:
            self._mappings[object_type] = mapping
        return mapping

    # ================================================================== connection check, schema
    def test_connection(self) -> None:
        """GET /ServiceProviderConfig, then one authenticated read (RFC 7643 §5 lets the former be public)."""
        self.http.service_provider_config(starting=True, fresh=True)
        mapping = self._mapping(next(iter(self.config.object_types)), starting=True)
        params: dict[str, str | int] = {"startIndex": 1, "count": 1, "attributes": "id"}
        self.http.send("GET", mapping.endpoint, target=mapping.endpoint, params=params, starting=True)

    def discover_schema(self) -> ConnectorSchema:
        """The configured object types, their mapped attributes typed by the server's /Schemas."""
        object_types = []
        for object_type in self.config.object_types:
            mapping = self._mapping(object_type, starting=True)
            attributes = tuple(
                AttributeSchema(
                    name=m.name,
                    syntax="reference" if m.reference else _SYNTAX.get(m.scim_type, "string"),
                    multi_valued=m.kind is Kind.MULTI,
                    required=m.required,
                )
                for m in mapping.attributes.values()
            )
            object_types.append(ObjectTypeSchema(name=object_type, attributes=attributes, anchor="id"))
        return ConnectorSchema(object_types=tuple(object_types))

    # ================================================================== full import
    def full_import(self) -> Iterator[ImportedObject | ImportFailure]:
        """Every resource of every configured type, paged by startIndex/count (RFC 7644 §3.4.2.4)."""
        for object_type in self.config.object_types:
            yield from self._import_type(self._mapping(object_type, starting=True))

    def _import_type(self, mapping: ResourceMapping) -> Iterator[ImportedObject | ImportFailure]:
        tops = sorted({m.path.top for m in mapping.attributes.values()} | {"id", "meta"})
        start = 1
        seen: set[str] = set()
        while True:
            params: dict[str, str | int] = {
                "startIndex": start,
                "count": self.config.page_size,
                "attributes": ",".join(tops),
            }
            page = self._import_page(mapping, params)
            resources = get_ci(page, "Resources")
            resources = resources if isinstance(resources, list) else []
            for resource in resources:
                item = self._imported(mapping, resource)
                if isinstance(item, ImportedObject):
                    # Index paging shifts when the server changes meanwhile: never yield an object twice.
                    if item.anchor in seen:
                        continue
                    seen.add(item.anchor)
                yield item
            if not resources:
                return
            start += len(resources)  # servers may return fewer than count (RFC 7644 §3.4.2.4)
            total = get_ci(page, "totalResults")
            if isinstance(total, int) and start > total:
                return

    def _import_page(self, mapping: ResourceMapping, params: Mapping[str, str | int]) -> dict[str, Any]:
        target = f"{mapping.endpoint}?startIndex={params['startIndex']}"
        response = self.http.send(
            "GET", mapping.endpoint, target=target, params=params, starting=True, patient=True
        )
        return self.http.json(response, target, starting=True)

    def _imported(self, mapping: ResourceMapping, resource: Any) -> ImportedObject | ImportFailure:
        if not isinstance(resource, Mapping):
            return ImportFailure(
                locator=mapping.locator(None),
                error_type="import-decode-error",
                message=f"{mapping.resource_type}: the server listed a {type(resource).__name__}, no object",
            )
        anchor = get_ci(resource, "id")
        if not isinstance(anchor, str) or not anchor:
            return ImportFailure(
                locator=mapping.locator(None),
                error_type="import-missing-anchor",
                message=f"A {mapping.resource_type} resource has no id to anchor it",
                raw=json.dumps(resource)[:2000],
            )
        locator = mapping.locator(anchor)
        try:
            attributes = flatten(mapping, resource)
        except UnmappableValue as exc:
            return ImportFailure(
                locator=locator,
                error_type="import-unmappable-value",
                message=f"{locator}: {exc}",
                raw=json.dumps(resource)[:2000],
            )
        meta = get_ci(resource, "meta")
        if isinstance(meta, Mapping):
            self.http.remember(mapping.locator(anchor), get_ci(meta, "version"))
        return ImportedObject(
            anchor=anchor, object_type=mapping.object_type, attributes=attributes, dn=None, locator=locator
        )

    # ================================================================== export
    def apply(self, export: PendingExport) -> ExportOutcome:
        """Apply one pending export idempotently (see connectors.base.Export for the error contract)."""
        mapping = self._mapping(export.object_type)
        if export.op == "add":
            return self._apply_add(mapping, export)
        if export.op == "delete":
            return self._apply_delete(mapping, export)
        # SCIM resources have no DN: a rename is its attribute changes.
        return self._apply_update(mapping, export)

    # ------------------------------------------------------------------ lookups
    def _get(
        self, mapping: ResourceMapping, anchor: str, tops: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """The resource (only ``tops`` attributes when given) and its version; cd-missing-object if gone."""
        params = {"attributes": ",".join(sorted({*tops, "id"}))} if tops else None
        target = mapping.locator(anchor)
        response = self.http.send("GET", f"{mapping.endpoint}/{anchor}", target=target, params=params)
        body = self.http.json(response, target)
        version = self.http.version_of(response, body)
        self.http.remember(mapping.locator(anchor), version)
        return body, version

    def _find(self, mapping: ResourceMapping, name: str, value: str) -> str | None:
        """The id of the resource whose mapped attribute ``name`` is ``value`` (filter search)."""
        mapped = mapping.attribute(name)
        path = mapped.path
        literal = json.dumps(value)
        if path.filter is not None:
            expression = f"{path.top}[{path.element_filter()} and {path.sub} eq {literal}]"
        else:
            expression = f"{path.top}{'.' + path.sub if path.sub else ''} eq {literal}"
        params: dict[str, str | int] = {"filter": expression, "attributes": "id", "startIndex": 1, "count": 2}
        target = f"{mapping.endpoint}?filter={expression}"
        body = self.http.json(self.http.send("GET", mapping.endpoint, target=target, params=params), target)
        found = [r for r in get_ci(body, "Resources") or [] if isinstance(r, Mapping)]
        if len(found) > 1:
            raise DataError(
                f"{len(found)} {mapping.resource_type} resources match {expression}",
                error_type="ambiguous-anchor",
            )
        anchor = get_ci(found[0], "id") if found else None
        return anchor if isinstance(anchor, str) and anchor else None

    def _anchor(self, mapping: ResourceMapping, export: PendingExport) -> str | None:
        """The export's anchor, or the id found by its match attribute (old or new value)."""
        if export.anchor:
            return export.anchor
        name = mapping.match
        if name is None:
            return None
        change = export.attributes.get(name)
        for values in (export.old.get(name), change.values if change is not None else None):
            if values:
                anchor = self._find(mapping, name, values[0])
                if anchor is not None:
                    return anchor
        return None

    # ------------------------------------------------------------------ add
    def _apply_add(self, mapping: ResourceMapping, export: PendingExport) -> ExportOutcome:
        body = build_resource(mapping, export.attributes)
        target = mapping.locator(None)
        existing = self._existing_for_add(mapping, export)
        if existing is not None:
            return self._convert_add(mapping, export, anchor=existing)
        response = self.http.send(
            "POST", mapping.endpoint, target=target, body=body, tolerate=frozenset({400, 409})
        )
        if not is_ok(response.status_code):
            scim_type, _ = scim_error_body(response)
            if response.status_code == 409 or (scim_type or "").lower() == "uniqueness":
                return self._convert_add(mapping, export, self.http.error(response, "POST", target))
            raise self.http.error(response, "POST", target)
        created = self.http.json(response, target)
        anchor = get_ci(created, "id")
        if not isinstance(anchor, str) or not anchor:
            anchor = bulk.anchor_of_location(response.headers.get("Location"))
        if not anchor:
            raise DataError(
                f"The SCIM server created a {mapping.resource_type} without an id",
                error_type="scim-bad-response",
            )
        self.http.remember(mapping.locator(anchor), self.http.version_of(response, created))
        return ExportOutcome(anchor=anchor, dn=None)

    def _match_value(self, mapping: ResourceMapping, export: PendingExport) -> str | None:
        change = export.attributes.get(mapping.match) if mapping.match is not None else None
        return change.values[0] if change is not None and change.op != "delete" and change.values else None

    def _existing_for_add(self, mapping: ResourceMapping, export: PendingExport) -> str | None:
        """For a match attribute the server does not keep unique (Group displayName): look before creating,
        so that a re-delivered add does not create a second resource. Unique ones answer 409 instead."""
        value = self._match_value(mapping, export)
        if mapping.match is None or value is None or mapping.attribute(mapping.match).unique:
            return None
        return self._find(mapping, mapping.match, value)

    def _convert_add(
        self,
        mapping: ResourceMapping,
        export: PendingExport,
        conflict: IdsyncError | None = None,
        anchor: str | None = None,
    ) -> ExportOutcome:
        """MIM "existing object: convert add to update": the add's values on the resource holding its key."""
        if anchor is None:
            value = self._match_value(mapping, export)
            anchor = (
                self._find(mapping, mapping.match, value) if mapping.match and value is not None else None
            )
        if anchor is None:
            reason = conflict.message if conflict is not None else "The resource exists"
            raise DataError(
                f"{reason}; no {mapping.resource_type} holds the add's {mapping.match or 'match attribute'} "
                f"value, so it cannot become an update",
                error_type="cd-existing-object",
            )
        changes = {
            n: AttrChange(op="replace", values=c.values) for n, c in export.attributes.items() if c.values
        }
        self._update(mapping, anchor, changes)
        return ExportOutcome(anchor=anchor, dn=None, actions=("converted-add-to-update",))

    # ------------------------------------------------------------------ update
    def _apply_update(self, mapping: ResourceMapping, export: PendingExport) -> ExportOutcome:
        for name in export.attributes:
            mapping.attribute(name)  # an unmapped attribute is a DataError before anything is sent
        anchor = self._anchor(mapping, export)
        if anchor is None:
            raise DataError(
                f"Cannot {export.op} {mapping.resource_type} of {export.mv_id!r}: no anchor and no resource "
                f"found by its {mapping.match or 'match attribute'}",
                error_type="cd-missing-object",
            )
        self._update(mapping, anchor, dict(export.attributes))
        return ExportOutcome(anchor=anchor, dn=None)

    def _update(self, mapping: ResourceMapping, anchor: str, changes: dict[str, AttrChange]) -> None:
        try:
            if self.http.supports("patch") and not self._patch_refused:
                self._patch(mapping, anchor, changes)
            else:
                self._put(mapping, anchor, changes)
        except DataError as err:
            if err.error_type == "cd-missing-object":
                raise DataError(
                    f"Cannot update {mapping.locator(anchor)}: no such resource on the SCIM server",
                    error_type="cd-missing-object",
                ) from None
            raise

    def _conditional(self, version: str | None) -> dict[str, str]:
        return {"If-Match": version} if version and self.http.etags() else {}

    def _patch(self, mapping: ResourceMapping, anchor: str, changes: dict[str, AttrChange]) -> None:
        """PATCH with If-Match; on 412 (or noTarget after a blind plan) re-read and retry once."""
        if not changes:
            self._get(mapping, anchor, ["id"])  # nothing to change: still say whether it exists
            return
        stateful = [m.path.top for n, c in changes.items() if needs_state(m := mapping.attribute(n), c)]
        state: dict[str, Any] | None = None
        version: str | None = None
        covered: frozenset[str] | None = None
        if stateful:
            state, version = self._get(mapping, anchor, stateful)
            covered = frozenset(top.lower() for top in stateful)
        elif self.http.etags():
            version = self.http.version(mapping.locator(anchor))
            if version is None:
                _, version = self._get(mapping, anchor, ["id"])
        target = mapping.locator(anchor)
        all_tops = sorted({mapping.attribute(n).path.top for n in changes})
        for attempt in range(2):
            ops = plan_patch(mapping, changes, state, covered)
            if not ops:
                return
            response = self.http.send(
                "PATCH",
                f"{mapping.endpoint}/{anchor}",
                target=target,
                body={"schemas": [PATCH_OP], "Operations": ops},
                headers=self._conditional(version),
                tolerate=frozenset({400, 412, 501}),
            )
            status = response.status_code
            if is_ok(status):
                body = self.http.json(response, target) if response.content else None
                self.http.remember(mapping.locator(anchor), self.http.version_of(response, body))
                return
            if status == 501:
                self._patch_refused = True
                self._put(mapping, anchor, changes)
                return
            retry = status == 412 or (
                status == 400
                and (state is None or covered is not None)  # some operations were planned blind
                and (scim_error_body(response)[0] or "").lower() == "notarget"
            )
            if not retry or attempt == 1:
                raise self.http.error(response, "PATCH", target)
            # Stale version, or a blind value-level op that missed: plan again from what the server holds.
            state, version = self._get(mapping, anchor, all_tops)
            covered = None
        raise AssertionError("unreachable")

    def _put(self, mapping: ResourceMapping, anchor: str, changes: dict[str, AttrChange]) -> None:
        """GET + PUT (servers without PATCH), conditional on the version read; one retry on 412."""
        target = mapping.locator(anchor)
        for attempt in range(2):
            current, version = self._get(mapping, anchor)
            updated = apply_local(mapping, current, changes)
            if updated == current:
                return
            updated.pop(next((k for k in updated if k.lower() == "meta"), "meta"), None)
            response = self.http.send(
                "PUT",
                f"{mapping.endpoint}/{anchor}",
                target=target,
                body=updated,
                headers=self._conditional(version),
                tolerate=frozenset({412}),
            )
            if is_ok(response.status_code):
                body = self.http.json(response, target) if response.content else None
                self.http.remember(mapping.locator(anchor), self.http.version_of(response, body))
                return
            if attempt == 1:
                raise self.http.error(response, "PUT", target)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ delete
    def _apply_delete(self, mapping: ResourceMapping, export: PendingExport) -> ExportOutcome:
        anchor = self._anchor(mapping, export)
        if anchor is None:
            return ExportOutcome(anchor=None, dn=None, actions=("already-deleted",))
        response = self.http.send(
            "DELETE",
            f"{mapping.endpoint}/{anchor}",
            target=mapping.locator(anchor),
            tolerate=frozenset({404}),
        )
        self.http.remember(mapping.locator(anchor), None)
        actions = ("already-deleted",) if response.status_code == 404 else ()
        return ExportOutcome(anchor=anchor, dn=None, actions=actions)

    # ================================================================== batch (SCIM Bulk)
    def apply_batch(self, exports: list[PendingExport]) -> list[ExportOutcome | IdsyncError]:
        """Bulk (RFC 7644 §3.7) when the server advertises it, else one by one; one result per export."""
        if not exports:
            return []
        bulk_limits = self._bulk_limits()
        if bulk_limits is None:
            return [self._apply_one(e) for e in exports]
        max_ops, max_bytes = bulk_limits
        results: list[ExportOutcome | IdsyncError | None] = [None] * len(exports)
        segment: list[tuple[int, bulk.BulkOperation]] = []
        keys: set[str] = set()
        used = 0

        def flush() -> None:
            nonlocal used
            if segment:
                self._run_bulk(exports, list(segment), results)
            segment.clear()
            keys.clear()
            used = 0

        for index, export in enumerate(exports):
            op = self._bulk_operation(export, f"idsync-{index}")
            if op is None:
                flush()
                results[index] = self._apply_one(export)
                continue
            key = export.anchor or export.mv_id
            op_size = bulk.size(op)
            # One operation per object per request: Bulk does not promise to keep their order.
            if key in keys or len(segment) >= max_ops or used + op_size > max_bytes - bulk.ENVELOPE_BYTES:
                flush()
            segment.append((index, op))
            keys.add(key)
            used += op_size
        flush()
        return [r if r is not None else IdsyncError("no result") for r in results]

    def _apply_one(self, export: PendingExport) -> ExportOutcome | IdsyncError:
        try:
            return self.apply(export)
        except IdsyncError as exc:
            return exc

    def _bulk_limits(self) -> tuple[int, int] | None:
        if not self.config.use_bulk:
            return None
        try:
            return bulk.limits(self.http.feature("bulk"))
        except IdsyncError:
            return None  # the one-by-one path reports the failure per export

    def _bulk_operation(self, export: PendingExport, bulk_id: str) -> bulk.BulkOperation | None:
        try:
            mapping = self._mapping(export.object_type)
            patch = self.http.supports("patch") and not self._patch_refused
            version = self.http.version(mapping.locator(export.anchor)) if export.anchor else None
            return bulk.operation(mapping, export, bulk_id, patch=patch, version=version)
        except IdsyncError:
            return None  # applied on its own, which reports the error

    def _run_bulk(
        self,
        exports: list[PendingExport],
        segment: list[tuple[int, bulk.BulkOperation]],
        results: list[ExportOutcome | IdsyncError | None],
    ) -> None:
        request = bulk.request([op for _, op in segment])
        try:
            response = self.http.send(
                "POST", "/Bulk", target="/Bulk", body=request, tolerate=frozenset({404, 413, 501})
            )
        except (RetriableError, FatalError) as exc:
            for index, _ in segment:
                results[index] = exc
            return
        answers: dict[str, dict[str, Any]] = {}
        if is_ok(response.status_code):
            try:
                answers = bulk.answers(response.json())
            except ValueError:
                answers = {}
        for index, op in segment:
            export = exports[index]
            answer = answers.get(op["bulkId"])
            outcome: ExportOutcome | IdsyncError | None = None
            if answer is not None:
                mapping = self._mapping(export.object_type)
                outcome = bulk.result(
                    mapping, export, op, answer, base_url=self.config.base_url, secrets=self.http.secrets
                )
                if isinstance(outcome, ExportOutcome) and outcome.anchor:
                    deleted = op["method"] == "DELETE"
                    self.http.remember(
                        mapping.locator(outcome.anchor), None if deleted else answer.get("version")
                    )
            # No answer (server stopped early, refused Bulk) or one that needs a re-read: apply on its own.
            results[index] = outcome if outcome is not None else self._apply_one(export)


__all__ = ["ScimConnector"]
