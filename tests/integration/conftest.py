from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.ldap.slapd import Slapd
from tests.integration.harness import Env


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[Env]:
    """A fresh slapd with ou=people and ou=disabled, and a working directory."""
    with Slapd(tmp_path / "slapd") as slapd:
        slapd.add_ou("disabled")
        yield Env(slapd, tmp_path)
