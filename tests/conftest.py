pytest_plugins = ["tests.fixtures.slapd", "tests.fixtures.scim"]
