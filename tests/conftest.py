pytest_plugins = ["tests.fixtures.slapd"]
