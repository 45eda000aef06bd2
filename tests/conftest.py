from hypothesis import settings

pytest_plugins = ["tests.fixtures.slapd", "tests.fixtures.scim"]

# No hypothesis deadline: a per-example time limit is a timing assertion, and it failed a threshold test
# on a loaded machine (a benchmark was running). Speed is measured by `idsync bench`, never by tests.
settings.register_profile("idsync", deadline=None)
settings.load_profile("idsync")
