"""TLS for ldap3 with the host name checked by OpenSSL.

ldap3 2.9.1 turns the SSL context's host name check off and calls ``ssl.match_hostname`` itself, which is
deprecated (a DeprecationWarning on every handshake) and removed in Python 3.12. This subclass wraps the
socket with a default context that verifies the chain *and* the name during the handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ldap3 import Tls


class VerifyingTls(Tls):  # type: ignore[misc]  # ldap3 is untyped
    """``Tls`` for ldaps:// and StartTLS; ``verify=False`` accepts any certificate (explicit opt-out)."""

    def __init__(self, *, hostname: str | None, verify: bool = True, ca_file: Path | None = None) -> None:
        super().__init__(
            validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            ca_certs_file=str(ca_file) if ca_file else None,
            sni=hostname,
        )
        self.hostname = hostname
        self.verify = verify

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certs_file)
        if not self.verify:
            ctx.check_hostname = False  # must precede verify_mode = CERT_NONE
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        """Called by ldap3 when opening an ldaps:// socket and on StartTLS."""
        connection.socket = self.context().wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self.hostname,
        )
