"""Stage agents: thin batched wrappers around the pure engine (decode, load, call, save, emit, ack)."""
