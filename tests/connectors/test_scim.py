"""ScimConnector against a real SCIM 2.0 server (scim2-server on loopback, tests.fixtures.scim).

Requests are observed through httpx event hooks (``Recorder``): observation, not mocking. Where a test
needs what scim2-server never does (a 429 with Retry-After, HTTP basic credentials), a small reverse proxy
(``ScimProxy``) sits in front of the real server and forwards everything else to it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connectors import base
from connectors.base import ExportOutcome, ImportedObject, ImportFailure
from connectors.scim import ScimConnector, ScimConnectorConfig, ScimObjectType, ScimPath, ScimRetriableError
from connectors.scim.errors import retry_after_seconds
from connectors.scim.paths import ENTERPRISE_USER
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, PendingExport
from tests.fixtures.scim import ScimProxy, ScimTenant, free_port

pytestmark = pytest.mark.integration

_seq = itertools.count(1)


def pending(op: str, object_type: str = "person", **kw: Any) -> PendingExport:
    n = next(_seq)
    fields: dict[str, Any] = {
        "export_id": f"e{n}",
        "seq": n,
        "connector": "scim",
        "mv_id": f"mv-{n}",
        "op": op,
        "object_type": object_type,
        "dn": "",
        "ts_ms": 0,
    }
    fields.update(kw)
    return PendingExport.model_validate(fields)


def replace(**values: list[str]) -> dict[str, AttrChange]:
    return {name: AttrChange(op="replace", values=v) for name, v in values.items()}


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    if_match: str | None
    status: int


class Recorder:
    """Records every request the connector sends and the status it got (httpx response hook)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def hooks(self) -> dict[str, list[Any]]:
        return {"response": [self._response]}

    def _response(self, response: httpx.Response) -> None:
        request = response.request
        self.calls.append(
            Call(
                method=request.method,
                path=request.url.path,
                params=dict(request.url.params),
                body=json.loads(request.content) if request.content else None,
                if_match=request.headers.get("If-Match"),
                status=response.status_code,
            )
        )

    def resource_calls(self) -> list[Call]:
        """Calls other than discovery (/ServiceProviderConfig, /ResourceTypes, /Schemas)."""
        discovery = ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas")
        return [c for c in self.calls if not c.path.endswith(discovery)]

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("POST", "PUT", "PATCH", "DELETE")]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def connector(scim_tenant: ScimTenant, recorder: Recorder) -> Iterator[ScimConnector]:
    conn = ScimConnector("scim", scim_tenant.config(), event_hooks=recorder.hooks())
    yield conn
    conn.close()


def by_user_name(items: list[ImportedObject | ImportFailure]) -> dict[str, ImportedObject]:
    return {
        i.attributes["userName"][0]: i
        for i in items
        if isinstance(i, ImportedObject) and i.object_type == "person"
    }


# ---------------------------------------------------------------------------------------- config, paths
def test_implements_the_connector_protocols(connector: ScimConnector) -> None:
    for proto in (base.FullImport, base.Export, base.BatchExport, base.SchemaDiscovery, base.ConnectionCheck):
        assert isinstance(connector, proto)
    assert not isinstance(connector, base.DeltaImport)


def test_config_validation_messages() -> None:
    ok = {"kind": "scim", "base_url": "https://scim.example.test/v2"}
    with pytest.raises(ValidationError, match="not a supported SCIM path"):
        ScimConnectorConfig(
            **ok, object_types={"person": {"resource_type": "User", "attributes": {"x": "a b"}}}
        )
    with pytest.raises(ValidationError, match="either token"):
        ScimConnectorConfig(**ok, token="t", username="u", password="p")
    with pytest.raises(ValidationError, match="both username and password"):
        ScimConnectorConfig(**ok, username="u")
    with pytest.raises(ValidationError, match="no default mapping"):
        ScimConnectorConfig(**ok, object_types={"device": {"resource_type": "Device"}})
    with pytest.raises(ValidationError, match="match_attribute"):
        ScimObjectType(resource_type="User", match_attribute="nope")
    with pytest.raises(ValidationError, match="base_url"):
        ScimConnectorConfig(kind="scim", base_url="ftp://x")
    config = ScimConnectorConfig(**ok, token="s3cret-token")
    assert "s3cret-token" not in config.model_dump_json() and "s3cret-token" not in repr(config)
    assert config.object_types["person"].match() == "userName"
    assert config.object_types["group"].match() == "displayName"


def test_path_parsing() -> None:
    p = ScimPath.parse('emails[type eq "work"].value')
    assert (p.urn, p.attr, p.filter, p.sub) == (None, "emails", ("type", "work"), "value")
    assert p.selector() == 'emails[type eq "work"]'
    p = ScimPath.parse(f"{ENTERPRISE_USER}:manager.value")
    assert (p.urn, p.attr, p.sub, p.top) == (
        ENTERPRISE_USER,
        "manager",
        "value",
        f"{ENTERPRISE_USER}:manager",
    )
    p = ScimPath.parse("emails[primary eq true].value")
    assert p.filter == ("primary", True)
    assert p.read({"emails": [{"value": "a", "primary": False}, {"value": "b", "primary": True}]}) == ["b"]
    with pytest.raises(ValueError, match="needs a sub-attribute"):
        ScimPath.parse('emails[type eq "work"]')


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------- connection
def test_test_connection_ok(connector: ScimConnector, recorder: Recorder) -> None:
    connector.test_connection()
    paths = [c.path.rsplit("/", 1)[-1] for c in recorder.calls]
    assert paths[0] == "ServiceProviderConfig" and "Users" in paths


def test_unreachable_port(scim_tenant: ScimTenant) -> None:
    conn = ScimConnector("scim", scim_tenant.config(base_url=f"http://127.0.0.1:{free_port()}/v2"))
    try:
        with pytest.raises(RetriableError) as err:
            conn.test_connection()
        assert err.value.error_type == "no-start-connection"
        with pytest.raises(RetriableError) as err:
            list(conn.full_import())
        assert err.value.error_type == "no-start-connection"
        with pytest.raises(RetriableError) as err:
            conn.apply(pending("add", attributes=replace(userName=["x"])))
        assert err.value.error_type == "cd-connection-failure"
        assert "Traceback" not in str(err.value)
    finally:
        conn.close()


def test_wrong_token_is_fatal_and_never_echoed(scim_tenant: ScimTenant) -> None:
    token = "wrong-" + scim_tenant.server.token
    conn = ScimConnector("scim", scim_tenant.config(token=token))
    try:
        with pytest.raises(FatalError) as err:
            conn.test_connection()
        assert err.value.error_type == "no-start-credentials"
        with pytest.raises(FatalError) as err:
            conn.apply(pending("add", attributes=replace(userName=["x"])))
        assert err.value.error_type == "no-start-credentials"
        assert token not in str(err.value) and scim_tenant.server.token not in str(err.value)
    finally:
        conn.close()


def test_wrong_base_url_is_no_start_bad_base_url(scim_tenant: ScimTenant) -> None:
    # scim2-server with tenants serves nothing at /v2 itself (v2 is a reserved tenant name): 404.
    conn = ScimConnector("scim", scim_tenant.config(base_url=f"{scim_tenant.server.url}/v2"))
    try:
        with pytest.raises(FatalError) as err:
            conn.test_connection()
        assert err.value.error_type == "no-start-bad-base-url"
    finally:
        conn.close()


def test_basic_auth_through_a_checking_proxy(scim_tenant: ScimTenant, scim_proxy: ScimProxy) -> None:
    # scim2-server only knows bearer tokens: the proxy checks basic credentials, then forwards with the token.
    scim_proxy.basic = ("svc-idsync", "b4sic-pass")
    base_url = f"{scim_proxy.url}/{scim_tenant.name}/v2"
    scim_tenant.user("via-proxy")
    good = ScimConnector(
        "scim",
        scim_tenant.config(base_url=base_url, token=None, username="svc-idsync", password="b4sic-pass"),
    )
    bad = ScimConnector(
        "scim",
        scim_tenant.config(base_url=base_url, token=None, username="svc-idsync", password="wrong-b4sic-pass"),
    )
    try:
        good.test_connection()
        assert "via-proxy" in by_user_name(list(good.full_import()))
        with pytest.raises(FatalError) as err:
            bad.test_connection()
        assert err.value.error_type == "no-start-credentials"
        assert "b4sic-pass" not in str(err.value)
    finally:
        good.close()
        bad.close()


# ---------------------------------------------------------------------------------------- full import
def test_full_import_pages_until_total_results(scim_tenant: ScimTenant, recorder: Recorder) -> None:
    ids = {scim_tenant.user(f"pg-{i:02}", title=f"T{i}")["id"] for i in range(25)}
    conn = ScimConnector("scim", scim_tenant.config(page_size=10), event_hooks=recorder.hooks())
    try:
        items = list(conn.full_import())
    finally:
        conn.close()
    people = [i for i in items if isinstance(i, ImportedObject) and i.object_type == "person"]
    assert {p.anchor for p in people} == ids and len(people) == 25
    pages = [c for c in recorder.calls if c.path.endswith("/Users") and c.method == "GET"]
    assert [c.params["startIndex"] for c in pages] == ["1", "11", "21"]
    assert all(c.params["count"] == "10" for c in pages)
    assert by_user_name(items)["pg-07"].attributes["title"] == ["T7"]
    assert by_user_name(items)["pg-07"].locator == f"User/{by_user_name(items)['pg-07'].anchor}"


def test_full_import_tolerates_short_pages(scim_limited_tenant: ScimTenant, recorder: Recorder) -> None:
    # The limited server returns at most 4 resources whatever count asks (filter.maxResults = 4).
    for i in range(10):
        scim_limited_tenant.user(f"short-{i}")
    conn = ScimConnector("scim", scim_limited_tenant.config(page_size=10), event_hooks=recorder.hooks())
    try:
        people = by_user_name(list(conn.full_import()))
    finally:
        conn.close()
    assert set(people) == {f"short-{i}" for i in range(10)}
    pages = [c for c in recorder.calls if c.path.endswith("/Users")]
    assert [c.params["startIndex"] for c in pages] == ["1", "5", "9"]


def test_full_import_flattens_per_mapping(connector: ScimConnector, scim_tenant: ScimTenant) -> None:
    boss = scim_tenant.user("boss")
    scim_tenant.create(
        "/Users",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_USER],
            "userName": "bjensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"type": "home", "value": "b@home.test"}, {"type": "work", "value": "b@work.test"}],
            "active": True,
            ENTERPRISE_USER: {"employeeNumber": "701984", "manager": {"value": boss["id"]}},
        },
    )
    group = scim_tenant.group("admins", members=[boss["id"]])
    items = list(connector.full_import())
    person = by_user_name(items)["bjensen"]
    assert person.attributes == {
        "userName": ["bjensen"],
        "givenName": ["Barbara"],
        "familyName": ["Jensen"],
        "email": ["b@work.test"],
        "active": ["true"],
        "employeeNumber": ["701984"],
        "manager": [boss["id"]],
    }
    groups = [i for i in items if isinstance(i, ImportedObject) and i.object_type == "group"]
    assert [(g.anchor, g.attributes) for g in groups] == [
        (group["id"], {"displayName": ["admins"], "members": [boss["id"]]})
    ]
    assert groups[0].locator == f"Group/{group['id']}"


def test_unmappable_resource_is_an_import_failure(scim_tenant: ScimTenant) -> None:
    plain = scim_tenant.user("plain")
    named = scim_tenant.user("named", name={"givenName": "N"})
    # "name" is a complex attribute: it cannot become a flat value.
    config = scim_tenant.config(
        object_types={
            "person": {"resource_type": "User", "attributes": {"userName": "userName", "full": "name"}}
        }
    )
    conn = ScimConnector("scim", config)
    try:
        items = list(conn.full_import())
    finally:
        conn.close()
    failures = [i for i in items if isinstance(i, ImportFailure)]
    assert [f.locator for f in failures] == [f"User/{named['id']}"]
    assert failures[0].error_type == "import-unmappable-value" and "'full'" in failures[0].message
    assert [i.anchor for i in items if isinstance(i, ImportedObject)] == [plain["id"]]


def test_full_import_waits_out_a_short_retry_after(scim_tenant: ScimTenant, scim_proxy: ScimProxy) -> None:
    scim_tenant.user("throttled-import")
    conn = ScimConnector("scim", scim_tenant.config(base_url=f"{scim_proxy.url}/{scim_tenant.name}/v2"))
    try:
        conn.discover_schema()  # discovery done: the 429 below hits the first page
        scim_proxy.log.clear()
        scim_proxy.fail_next = [(429, {"Retry-After": "1"})]
        started = time.monotonic()
        items = list(conn.full_import())
        assert time.monotonic() - started >= 1.0
        # A Retry-After longer than import_max_retry_after_s fails the run, retriable, with the delay.
        scim_proxy.fail_next = [(429, {"Retry-After": "120"})]
        with pytest.raises(ScimRetriableError) as err:
            list(conn.full_import())
        assert err.value.retry_after_s == 120.0 and err.value.error_type == "no-start-connection"
    finally:
        conn.close()
    assert "throttled-import" in by_user_name(items)
    assert [(r.command, r.status) for r in scim_proxy.log][:2] == [("GET", 429), ("GET", 200)]


# ---------------------------------------------------------------------------------------- export: add
def test_add_writes_every_mapped_path(connector: ScimConnector, scim_tenant: ScimTenant) -> None:
    boss = scim_tenant.user("the-boss")
    outcome = connector.apply(
        pending(
            "add",
            attributes=replace(
                userName=["ajones"],
                givenName=["Alice"],
                email=["alice@work.test"],
                active=["false"],
                employeeNumber=["42"],
                manager=[boss["id"]],
                title=[],
            ),
        )
    )
    assert outcome.anchor and outcome.actions == ()
    held = scim_tenant.get("/Users", outcome.anchor)
    assert held is not None
    assert held["userName"] == "ajones" and held["name"] == {"givenName": "Alice"}
    assert held["emails"] == [{"type": "work", "value": "alice@work.test"}]
    assert held["active"] is False  # typed by the server's schema: a JSON boolean
    assert held[ENTERPRISE_USER] == {"employeeNumber": "42", "manager": {"value": boss["id"]}}
    assert ENTERPRISE_USER in held["schemas"] and "title" not in held


def test_add_of_an_existing_user_is_converted_to_an_update(
    connector: ScimConnector, scim_tenant: ScimTenant
) -> None:
    existing = scim_tenant.user("dup", title="Old")
    outcome = connector.apply(pending("add", attributes=replace(userName=["dup"], title=["New"])))
    assert outcome == ExportOutcome(anchor=existing["id"], dn=None, actions=("converted-add-to-update",))
    held = scim_tenant.get("/Users", existing["id"])
    assert held is not None and held["title"] == "New"
    assert len(scim_tenant.find("/Users", 'userName eq "dup"')) == 1


def test_add_conflict_that_cannot_be_converted_is_cd_existing_object(scim_tenant: ScimTenant) -> None:
    scim_tenant.user("taken", externalId="ext-1")
    config = scim_tenant.config(
        object_types={"person": {"resource_type": "User", "match_attribute": "externalId"}}
    )
    conn = ScimConnector("scim", config)
    try:
        with pytest.raises(DataError) as err:
            conn.apply(pending("add", attributes=replace(userName=["taken"], externalId=["ext-2"])))
    finally:
        conn.close()
    assert err.value.error_type == "cd-existing-object"


def test_server_side_validation_error_is_schema_violation(connector: ScimConnector) -> None:
    with pytest.raises(DataError) as err:
        connector.apply(pending("add", attributes=replace(title=["no userName"])))  # userName is required
    assert err.value.error_type == "schema-violation"
    assert "\n" not in str(err.value) and "invalidValue" in str(err.value)


def test_client_side_type_error_and_unmapped_attribute(connector: ScimConnector, recorder: Recorder) -> None:
    with pytest.raises(DataError) as err:
        connector.apply(pending("add", attributes=replace(userName=["typed"], active=["maybe"])))
    assert err.value.error_type == "schema-violation" and "boolean" in str(err.value)
    with pytest.raises(DataError) as err:
        connector.apply(pending("update", anchor="x", attributes=replace(shoeSize=["44"])))
    assert err.value.error_type == "schema-violation" and "shoeSize" in str(err.value)
    with pytest.raises(DataError) as err:
        connector.apply(pending("add", object_type="device", attributes=replace(userName=["d"])))
    assert err.value.error_type == "unknown-object-type"
    assert recorder.writes() == []


# ---------------------------------------------------------------------------------------- export: update
def test_update_patches_each_kind_of_path(
    connector: ScimConnector, scim_tenant: ScimTenant, recorder: Recorder
) -> None:
    user = scim_tenant.user("upd", title="Eng", name={"givenName": "U", "familyName": "Pd"})
    update = pending(
        "update",
        anchor=user["id"],
        attributes={
            "title": AttrChange(op="replace", values=["Lead"]),
            "familyName": AttrChange(op="replace", values=[]),
            "email": AttrChange(op="replace", values=["upd@work.test"]),
            "employeeNumber": AttrChange(op="replace", values=["7"]),
        },
    )
    assert connector.apply(update) == ExportOutcome(anchor=user["id"], dn=None)
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None
    assert held["title"] == "Lead" and held["name"] == {"givenName": "U"}
    assert held["emails"] == [{"type": "work", "value": "upd@work.test"}]
    assert held[ENTERPRISE_USER]["employeeNumber"] == "7"
    patches = [c for c in recorder.writes() if c.method == "PATCH"]
    assert len(patches) == 1
    ops = patches[0].body["Operations"]
    assert {"op": "add", "path": "emails", "value": [{"type": "work", "value": "upd@work.test"}]} in ops
    assert {"op": "remove", "path": "name.familyName"} in ops

    # The work email now exists: a change replaces its value in place.
    recorder.clear()
    connector.apply(pending("update", anchor=user["id"], attributes=replace(email=["new@work.test"])))
    ops = next(c for c in recorder.writes() if c.method == "PATCH").body["Operations"]
    assert ops == [{"op": "replace", "path": 'emails[type eq "work"].value', "value": "new@work.test"}]

    # Re-delivered: one effect, and nothing left to send for a state-checked change.
    recorder.clear()
    connector.apply(pending("update", anchor=user["id"], attributes=replace(email=["new@work.test"])))
    assert recorder.writes() == []
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None and held["emails"] == [{"type": "work", "value": "new@work.test"}]


def test_update_of_a_missing_resource_is_cd_missing_object(connector: ScimConnector) -> None:
    with pytest.raises(DataError) as err:
        connector.apply(pending("update", anchor="0" * 32, attributes=replace(title=["x"])))
    assert err.value.error_type == "cd-missing-object"
    with pytest.raises(DataError) as err:
        connector.apply(pending("update", attributes=replace(title=["x"])))  # no anchor, nothing to match
    assert err.value.error_type == "cd-missing-object"


def test_update_without_anchor_finds_the_resource_by_its_match_attribute(
    connector: ScimConnector, scim_tenant: ScimTenant
) -> None:
    user = scim_tenant.user("by-name")
    outcome = connector.apply(
        pending("update", old={"userName": ["by-name"]}, attributes=replace(title=["T"]))
    )
    assert outcome.anchor == user["id"]
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None and held["title"] == "T"


def test_rename_applies_its_attribute_changes(connector: ScimConnector, scim_tenant: ScimTenant) -> None:
    user = scim_tenant.user("old-name")
    rename = pending("rename", anchor=user["id"], new_dn="x", attributes=replace(userName=["new-name"]))
    assert connector.apply(rename) == ExportOutcome(anchor=user["id"], dn=None)
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None and held["userName"] == "new-name"


def test_delete_is_idempotent(connector: ScimConnector, scim_tenant: ScimTenant) -> None:
    user = scim_tenant.user("gone-soon")
    delete = pending("delete", anchor=user["id"])
    assert connector.apply(delete).actions == ()
    assert scim_tenant.get("/Users", user["id"]) is None
    assert connector.apply(delete).actions == ("already-deleted",)


# ---------------------------------------------------------------------------------------- groups
def test_one_member_change_on_a_big_group_is_one_patch_op(
    connector: ScimConnector, scim_tenant: ScimTenant, recorder: Recorder
) -> None:
    members = [scim_tenant.user(f"m-{i:03}")["id"] for i in range(60)]
    newcomer = scim_tenant.user("newcomer")["id"]
    group = scim_tenant.group("big", members=members)

    connector.apply(
        pending(
            "update",
            "group",
            anchor=group["id"],
            attributes={"members": AttrChange(op="add", values=[newcomer])},
        )
    )
    patches = [c for c in recorder.writes()]
    assert [c.method for c in patches] == ["PATCH"]
    assert patches[0].body["Operations"] == [{"op": "add", "path": "members", "value": [{"value": newcomer}]}]
    # The whole group was never read for it either (only its version, for If-Match).
    assert all(c.params.get("attributes") == "id" for c in recorder.resource_calls() if c.method == "GET")

    recorder.clear()
    connector.apply(
        pending(
            "update",
            "group",
            anchor=group["id"],
            attributes={"members": AttrChange(op="delete", values=[members[0]])},
        )
    )
    ops = [c.body["Operations"] for c in recorder.writes()]
    assert ops == [[{"op": "remove", "path": f'members[value eq "{members[0]}"]'}]]

    # A full replace is diffed against the group: one value differs, one operation.
    recorder.clear()
    wanted = [*members[1:-1], newcomer, members[0]]
    connector.apply(
        pending(
            "update",
            "group",
            anchor=group["id"],
            attributes={"members": AttrChange(op="replace", values=wanted)},
        )
    )
    ops = [c.body["Operations"] for c in recorder.writes()]
    assert ops == [
        [
            {"op": "add", "path": "members", "value": [{"value": members[0]}]},
            {"op": "remove", "path": f'members[value eq "{members[-1]}"]'},
        ]
    ]
    held = scim_tenant.get("/Groups", group["id"])
    assert held is not None and sorted(m["value"] for m in held["members"]) == sorted(wanted)
    assert all(c.method != "PUT" for c in recorder.calls)

    # Re-delivered replace: nothing to do.
    recorder.clear()
    connector.apply(
        pending(
            "update",
            "group",
            anchor=group["id"],
            attributes={"members": AttrChange(op="replace", values=wanted)},
        )
    )
    assert recorder.writes() == []


def test_group_add_with_members(connector: ScimConnector, scim_tenant: ScimTenant) -> None:
    alice = scim_tenant.user("g-alice")["id"]
    outcome = connector.apply(
        pending("add", "group", attributes=replace(displayName=["team"], members=[alice]))
    )
    assert outcome.anchor
    held = scim_tenant.get("/Groups", outcome.anchor)
    assert held is not None and held["members"] == [{"value": alice}]
    # scim2-server does not keep displayName unique (no 409): a re-delivered add must still have one effect.
    again = connector.apply(
        pending("add", "group", attributes=replace(displayName=["team"], members=[alice]))
    )
    assert again == ExportOutcome(anchor=outcome.anchor, dn=None, actions=("converted-add-to-update",))
    assert len(scim_tenant.find("/Groups", 'displayName eq "team"')) == 1
    batch = connector.apply_batch([pending("add", "group", attributes=replace(displayName=["team"]))])
    assert batch == [ExportOutcome(anchor=outcome.anchor, dn=None, actions=("converted-add-to-update",))]
    assert len(scim_tenant.all("/Groups")) == 1


# ---------------------------------------------------------------------------------------- ETags
def test_stale_etag_is_re_read_and_retried_once(
    connector: ScimConnector, scim_tenant: ScimTenant, recorder: Recorder
) -> None:
    user = scim_tenant.user("etag", title="Before")
    list(connector.full_import())  # the connector now knows the user's version
    scim_tenant.patch("/Users", user["id"], [{"op": "replace", "path": "title", "value": "Behind its back"}])
    recorder.clear()

    connector.apply(pending("update", anchor=user["id"], attributes=replace(givenName=["G"])))
    calls = recorder.resource_calls()
    assert [(c.method, c.status) for c in calls] == [("PATCH", 412), ("GET", 200), ("PATCH", 204)]
    first, _, second = calls
    assert first.if_match == user["meta"]["version"]
    assert second.if_match and second.if_match != first.if_match
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None and held["title"] == "Behind its back" and held["name"] == {"givenName": "G"}


def test_etag_still_stale_after_the_retry_is_retriable(scim_tenant: ScimTenant, recorder: Recorder) -> None:
    user = scim_tenant.user("racing")
    counter = itertools.count()

    def concurrent_writer(request: httpx.Request) -> None:
        # Another writer changes the user right before each of the connector's PATCHes.
        if request.method == "PATCH":
            scim_tenant.patch(
                "/Users", user["id"], [{"op": "replace", "path": "title", "value": f"w{next(counter)}"}]
            )

    hooks = {**recorder.hooks(), "request": [concurrent_writer]}
    conn = ScimConnector("scim", scim_tenant.config(), event_hooks=hooks)
    try:
        with pytest.raises(ScimRetriableError) as err:
            conn.apply(pending("update", anchor=user["id"], attributes=replace(givenName=["G"])))
    finally:
        conn.close()
    assert err.value.error_type == "cd-concurrent-modification"
    assert [(c.method, c.status) for c in recorder.calls if c.method == "PATCH"] == [("PATCH", 412)] * 2


# ---------------------------------------------------------------------------------------- throttling
def test_429_with_retry_after_is_retriable_with_the_delay(
    scim_tenant: ScimTenant, scim_proxy: ScimProxy
) -> None:
    user = scim_tenant.user("busy")
    conn = ScimConnector("scim", scim_tenant.config(base_url=f"{scim_proxy.url}/{scim_tenant.name}/v2"))
    update = pending("update", anchor=user["id"], attributes=replace(title=["after the wait"]))
    try:
        conn.test_connection()
        scim_proxy.fail_next = [(429, {"Retry-After": "7"})]
        with pytest.raises(ScimRetriableError) as err:
            conn.apply(update)
        assert err.value.retry_after_s == 7.0 and err.value.error_type == "cd-throttled"
        assert isinstance(err.value, RetriableError)
        scim_proxy.fail_next = [(503, {"Retry-After": "2"})]
        with pytest.raises(ScimRetriableError) as err:
            conn.apply(update)
        assert err.value.retry_after_s == 2.0 and err.value.error_type == "cd-busy"
        conn.apply(update)  # the proxy forwards again: the real server applies it
    finally:
        conn.close()
    held = scim_tenant.get("/Users", user["id"])
    assert held is not None and held["title"] == "after the wait"


# ---------------------------------------------------------------------------------------- no PATCH: GET + PUT
def test_server_without_patch_gets_get_and_put(scim_limited_tenant: ScimTenant, recorder: Recorder) -> None:
    user = scim_limited_tenant.user("putme", title="Old")
    member = scim_limited_tenant.user("putmember")["id"]
    group = scim_limited_tenant.group("putgroup")
    conn = ScimConnector("scim", scim_limited_tenant.config(), event_hooks=recorder.hooks())
    try:
        conn.apply(
            pending("update", anchor=user["id"], attributes=replace(title=["New"], email=["p@w.test"]))
        )
        conn.apply(
            pending(
                "update",
                "group",
                anchor=group["id"],
                attributes={"members": AttrChange(op="add", values=[member])},
            )
        )
        with pytest.raises(DataError) as err:
            conn.apply(pending("update", anchor="0" * 32, attributes=replace(title=["x"])))
        assert err.value.error_type == "cd-missing-object"
    finally:
        conn.close()
    assert "PATCH" not in {c.method for c in recorder.calls}
    assert [c.method for c in recorder.writes()] == ["PUT", "PUT"]
    assert all(c.if_match is None for c in recorder.calls)  # the server has no ETags
    held = scim_limited_tenant.get("/Users", user["id"])
    assert (
        held is not None
        and held["title"] == "New"
        and held["emails"] == [{"type": "work", "value": "p@w.test"}]
    )
    held = scim_limited_tenant.get("/Groups", group["id"])
    assert held is not None and held["members"] == [{"value": member}]


def test_put_with_a_stale_etag_is_re_read_and_retried_once(
    scim_put_etag_tenant: ScimTenant, recorder: Recorder
) -> None:
    tenant = scim_put_etag_tenant
    user = tenant.user("put-etag", title="Before")
    writers = itertools.count()

    def concurrent_writer(request: httpx.Request) -> None:
        # Another writer changes the user right before the connector's first PUT.
        if request.method == "PUT" and next(writers) == 0:
            tenant.patch(
                "/Users", user["id"], [{"op": "replace", "path": "title", "value": "Behind its back"}]
            )

    hooks = {**recorder.hooks(), "request": [concurrent_writer]}
    conn = ScimConnector("scim", tenant.config(), event_hooks=hooks)
    try:
        conn.apply(pending("update", anchor=user["id"], attributes=replace(givenName=["G"])))
    finally:
        conn.close()
    calls = recorder.resource_calls()
    assert [(c.method, c.status) for c in calls] == [("GET", 200), ("PUT", 412), ("GET", 200), ("PUT", 200)]
    assert calls[1].if_match and calls[3].if_match and calls[1].if_match != calls[3].if_match
    held = tenant.get("/Users", user["id"])
    assert held is not None and held["title"] == "Behind its back" and held["name"] == {"givenName": "G"}


# ---------------------------------------------------------------------------------------- bulk
def test_batch_uses_one_bulk_request(
    connector: ScimConnector, scim_tenant: ScimTenant, recorder: Recorder
) -> None:
    keep = scim_tenant.user("b-keep")
    drop = scim_tenant.user("b-drop")
    dup = scim_tenant.user("b-dup")
    batch = [
        pending("add", attributes=replace(userName=["b-new"], title=["N"])),
        pending("update", anchor=keep["id"], attributes=replace(title=["K"])),
        pending("delete", anchor=drop["id"]),
        pending("delete", anchor="0" * 32),
        pending("update", anchor="1" * 32, attributes=replace(title=["x"])),
        pending("add", attributes=replace(userName=["b-dup"], title=["D"])),
    ]
    results = connector.apply_batch(batch)
    bulks = [c for c in recorder.writes() if c.path.endswith("/Bulk")]
    assert len(bulks) == 1 and len(bulks[0].body["Operations"]) == 6
    assert isinstance(results[0], ExportOutcome) and results[0].anchor
    assert results[1] == ExportOutcome(anchor=keep["id"], dn=None)
    assert results[2] == ExportOutcome(anchor=drop["id"], dn=None)
    assert results[3] == ExportOutcome(anchor="0" * 32, dn=None, actions=("already-deleted",))
    assert isinstance(results[4], DataError) and results[4].error_type == "cd-missing-object"
    assert results[5] == ExportOutcome(anchor=dup["id"], dn=None, actions=("converted-add-to-update",))
    new = scim_tenant.get("/Users", results[0].anchor)
    assert new is not None and new["title"] == "N"
    assert (scim_tenant.get("/Users", keep["id"]) or {}).get("title") == "K"
    assert scim_tenant.get("/Users", drop["id"]) is None
    assert (scim_tenant.get("/Users", dup["id"]) or {}).get("title") == "D"


def test_batch_without_bulk_support_applies_one_by_one(
    scim_limited_tenant: ScimTenant, recorder: Recorder
) -> None:
    conn = ScimConnector("scim", scim_limited_tenant.config(), event_hooks=recorder.hooks())
    try:
        results = conn.apply_batch(
            [pending("add", attributes=replace(userName=[f"one-{i}"])) for i in range(3)]
            + [pending("update", anchor="0" * 32, attributes=replace(title=["x"]))]
        )
    finally:
        conn.close()
    assert not any(c.path.endswith("/Bulk") for c in recorder.calls)
    assert [c.method for c in recorder.writes()] == ["POST"] * 3
    assert all(isinstance(r, ExportOutcome) for r in results[:3])
    assert isinstance(results[3], IdsyncError) and results[3].error_type == "cd-missing-object"
    assert {u["userName"] for u in scim_limited_tenant.all("/Users")} == {"one-0", "one-1", "one-2"}


# ---------------------------------------------------------------------------------------- schema
def test_discover_schema_types_the_mapping(connector: ScimConnector) -> None:
    schema = connector.discover_schema()
    person = schema.object_type("person")
    group = schema.object_type("group")
    assert person is not None and group is not None and person.anchor == "id"
    attrs = {a.name: a for a in person.attributes}
    assert attrs["active"].syntax == "boolean"
    assert attrs["manager"].syntax == "reference"
    assert attrs["userName"].required and not attrs["userName"].multi_valued
    members = {a.name: a for a in group.attributes}["members"]
    assert members.multi_valued and members.syntax == "reference"
