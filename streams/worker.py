"""``idsync worker``: run the stage agents continuously (delta sync) until SIGTERM or SIGINT.

Several worker processes with the same configuration form one consumer group and share the partitions.
Imports are published by ``idsync sync`` (full import runs), by follow-mode connectors or by any external
producer of change records; the worker syncs and exports whatever arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import faust

from streams.app import Pipeline, ensure_topics
from streams.follow import start_followers
from streams.runtime import tune_gc

log = logging.getLogger("idsync")


def run_worker(p: Pipeline, loglevel: str = "warn") -> int:
    """Run the faust worker for ``p`` until it is stopped; returns the exit code."""
    p.rt.settings.data_dir.mkdir(parents=True, exist_ok=True)
    start_followers(p)  # connectors with import_mode: follow (streams.follow)
    asyncio.run(ensure_topics(p.rt))
    worker = faust.Worker(p.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    tune_gc()

    async def hold_resources() -> None:
        # Runs for the life of the worker; on shutdown faust cancels it and the producer and stores close.
        try:
            await asyncio.Event().wait()
        finally:
            # The stage consumers are stopped with it: let them save their state first.
            waiting = [c.stopped.wait() for c in p.consumers]
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*waiting), 20)
            await p.rt.stop()

    p.app.task(hold_resources)

    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        p.close()
    return 0
