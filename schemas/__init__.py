"""Contracts and state of idsync.

- ``schemas.records``: the public topic contracts (pydantic): change records, pending exports,
  ``mv.changes``, errors. Field names are part of the wire format: change them only with a new ``version``.
- ``schemas.wire``: msgspec mirrors of those contracts, for the hot path.
- ``schemas.messages``: internal messages between the stages (msgspec; no compatibility promise).
- ``schemas.state``: connector-space, metaverse and join-index state (msgspec, in RocksDB).
- ``schemas.config``: the configuration file (pydantic).
"""
