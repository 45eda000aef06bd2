"""File connectors: JSON Lines (``jsonl``) and LDIF (``ldif``) import, atomic export files.

The kinds are registered by entry point (``connectors.files.jsonl:KIND``, ``connectors.files.ldif:KIND``);
the CSV kind (``connectors.csv``) shares this package's export machinery (``atomic``, ``image``,
``exportfile``). Nothing is imported here, so using that machinery does not load the LDIF code.
"""
