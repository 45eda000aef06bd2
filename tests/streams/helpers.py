"""Small helpers of the stream tests that drive a consumer task on a real broker."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.config import IdsyncConfig
from streams.bench.records import bench_config
from streams.config import load_config
from streams.runtime import Runtime, Settings


async def until(check: Callable[[], Any], seconds: float, step: float = 0.02) -> None:
    """Poll ``check`` (a function or a coroutine function) until it returns true or ``seconds`` pass;
    the caller asserts the outcome afterwards, so a timeout fails with its own message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(step)


async def cancel(task: asyncio.Task[Any], *cleanups: Callable[[], Awaitable[Any]]) -> None:
    """Cancel a consumer task, expect it to end cancelled, then run the cleanups (stop clients)."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for cleanup in cleanups:
        await cleanup()


@dataclass
class Message:
    """Where a record came from, as a stage reads it off an event (``event.message``)."""

    topic: str
    partition: int
    offset: int


@dataclass
class Ev:
    """A consumed record as a stage's ``process`` takes it."""

    message: Message
    value: Any


def empty_bench_config(
    tmp: Path,
    instance: str,
    partitions: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **pipeline: Any,
) -> IdsyncConfig:
    """The bench's configuration of ``instance`` with ``partitions`` partitions and an empty HR file;
    ``edit``: changes the configuration file's contents before it is loaded (and validated);
    ``pipeline``: further ``pipeline`` settings."""
    hr = tmp / "hr.csv"
    hr.write_text("employee_id\n")
    path = bench_config(instance, tmp, partitions, hr, pipeline=pipeline)
    if edit is not None:
        raw = yaml.safe_load(path.read_text())
        edit(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def bench_runtime(
    bootstrap: str,
    tmp: Path,
    name: str,
    instance: str,
    partitions: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **pipeline: Any,
) -> Runtime:
    """A worker's runtime (data in ``tmp/name``) for the bench's configuration of ``instance`` with
    ``partitions`` partitions and an empty HR file, on the broker at ``bootstrap``; ``edit`` and
    ``pipeline`` as for ``empty_bench_config``."""
    config = empty_bench_config(tmp, instance, partitions, edit, **pipeline)
    return Runtime(Settings(bootstrap_servers=bootstrap, data_dir=tmp / name, fetch_max_wait_ms=10), config)
