import pytest
from hypothesis import settings

from connectors.ldap import slapd
from engine import shared
from streams.native import StaleEngine, check_engine_fresh, engine_build

pytest_plugins = ["tests.fixtures.slapd", "tests.fixtures.scim"]

# No hypothesis deadline: a per-example time limit is a timing assertion, and it failed a threshold test
# on a loaded machine (a benchmark was running). Speed is measured by `idsync bench`, never by tests.
settings.register_profile("idsync", deadline=None)
settings.load_profile("idsync")

# The tests' throwaway slapd servers write without syncing each transaction to disk (``dbnosync``): ~1.7x
# as fast; a killed or restarted slapd still reads them back (connectors.ldap.slapd.SYNC_WRITES).
slapd.SYNC_WRITES = False


def pytest_configure(config: pytest.Config) -> None:
    # An engine module changed after it was compiled (scripts/compile_engine.py) would run stale.
    try:
        check_engine_fresh()
    except StaleEngine as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    return f"idsync engine: {engine_build()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if engine_build() != "compiled":
        return
    skip = pytest.mark.skip(reason="replaces engine functions; the engine is compiled (mypyc)")
    for item in items:
        if "interpreted" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _shared_maps_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metaverse step that shares a large map with the object it was given (``engine.shared``)
    verifies that each change of it went through the journal, in every test that runs one in-process."""
    monkeypatch.setattr(shared, "CHECK", True)
