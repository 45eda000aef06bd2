"""Pure sync semantics, one module per MIM stage. Imports only ``schemas``; no I/O, no clocks, no randomness.

Every stage is a function ``(state, message, ...) -> (new_state, outputs)``; the streams runtime loads
state, calls it, saves and emits.
"""
