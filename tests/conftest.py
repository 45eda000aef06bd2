import pytest
from hypothesis import settings

from engine import shared

pytest_plugins = ["tests.fixtures.slapd", "tests.fixtures.scim"]

# No hypothesis deadline: a per-example time limit is a timing assertion, and it failed a threshold test
# on a loaded machine (a benchmark was running). Speed is measured by `idsync bench`, never by tests.
settings.register_profile("idsync", deadline=None)
settings.load_profile("idsync")


@pytest.fixture(autouse=True)
def _shared_maps_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metaverse step that shares a large map with the object it was given (``engine.shared``)
    verifies that each change of it went through the journal, in every test that runs one in-process."""
    monkeypatch.setattr(shared, "CHECK", True)
