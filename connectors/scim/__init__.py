"""SCIM 2.0 connector (RFC 7643 / 7644) over httpx: paged import, PATCH/PUT exports with ETags, Bulk."""

from connectors.base import ConnectorKind
from connectors.scim.config import ScimConnectorConfig, ScimObjectType
from connectors.scim.connector import ScimConnector
from connectors.scim.errors import ScimRetriableError
from connectors.scim.paths import ScimPath

KIND = ConnectorKind(
    ScimConnectorConfig,
    ScimConnector,
    "SCIM 2.0 service provider: paged import, PATCH/PUT export with ETags, Bulk",
)

__all__ = ["KIND", "ScimConnector", "ScimConnectorConfig", "ScimObjectType", "ScimPath", "ScimRetriableError"]
