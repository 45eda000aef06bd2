"""The streaming runtime: faust app factory, topics, batched stage agents, connectors' I/O, CLI."""
