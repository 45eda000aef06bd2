"""LDAP connector (ldap3) and a throwaway slapd for tests and the demo."""

import warnings

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1 names deprecated in pyasn1 0.6 (tagMap, typeMap): library noise that would
    # otherwise fail test runs that turn warnings into errors.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ldap3(\..*)?$")
    import ldap3  # noqa: F401

from connectors.base import ConnectorKind
from connectors.ldap.connector import LdapConnector
from connectors.ldap.errors import map_ldap_error
from schemas.config import LdapConnectorConfig

KIND = ConnectorKind(LdapConnectorConfig, LdapConnector, "LDAP directory (ldap3): paged import, export")

__all__ = ["KIND", "LdapConnector", "map_ldap_error"]
