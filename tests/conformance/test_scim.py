"""The conformance suite on the SCIM connector against a real scim2-server (tests.fixtures.scim)."""

from __future__ import annotations

import pytest

from connectors.base import Connector
from connectors.scim import ScimConnector
from schemas.records import AttrChange, PendingExport
from tests.conformance.suite import ConformanceSuite, Harness, pending
from tests.fixtures.scim import ScimTenant, free_port


class ScimHarness(Harness):
    kind = "scim"
    key_attr = "userName"
    change_attr = "title"

    def __init__(self, tenant: ScimTenant) -> None:
        self.tenant = tenant
        self.secret = tenant.server.token

    def _id(self, key: str) -> str | None:
        found = self.tenant.find("/Users", f'userName eq "{key}"')
        return found[0]["id"] if found else None

    def connector(self) -> Connector:
        return ScimConnector("scim", self.tenant.config())

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.tenant.user(key, title="Engineer")

    def change(self, key: str, value: str) -> None:
        anchor = self._id(key)
        assert anchor is not None
        self.tenant.patch("/Users", anchor, [{"op": "replace", "path": "title", "value": value}])

    def delete(self, key: str) -> None:
        anchor = self._id(key)
        if anchor is not None:
            self.tenant.delete("/Users", anchor)

    def read(self, key: str) -> dict[str, list[str]] | None:
        found = self.tenant.find("/Users", f'userName eq "{key}"')
        if not found:
            return None
        assert len(found) == 1
        return {k: [v] for k, v in found[0].items() if isinstance(v, str)}

    def add_export(self, key: str) -> PendingExport:
        return pending(self, "add", attributes={"userName": AttrChange(op="replace", values=[key])})

    def unreachable(self) -> Connector:
        return ScimConnector("scim", self.tenant.config(base_url=f"http://127.0.0.1:{free_port()}/v2"))

    def bad_credentials(self) -> Connector:
        return ScimConnector("scim", self.tenant.config(token="wrong-" + self.tenant.server.token))


@pytest.mark.integration
class TestScimConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, scim_tenant: ScimTenant) -> Harness:
        return ScimHarness(scim_tenant)


@pytest.mark.integration
class TestScimConformanceWithoutPatch(ConformanceSuite):
    """The same behaviours on a server without PATCH, ETags or Bulk, paging 4 by 4 (GET + PUT exports)."""

    @pytest.fixture
    def harness(self, scim_limited_tenant: ScimTenant) -> Harness:
        return ScimHarness(scim_limited_tenant)
