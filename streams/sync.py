"""One-shot sync cycles (MIM's run profiles in order) and running a pipeline with a faust worker.

A cycle: full import of the export targets (so existing objects join instead of being provisioned),
full import of the sources, delta sync and export as the records flow, then confirming imports of the
targets until they show everything exported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from connectors.base import FullImport
from schemas.codec import unpack
from schemas.errors import IdsyncError
from schemas.state import MVObject
from streams.app import Pipeline, ensure_topics
from streams.importer import ImportReport, full_import
from streams.runtime import Runtime, tune_gc
from streams.stages.staging import connector_space_size

log = logging.getLogger("idsync")


async def drained(rt: Runtime, settle_s: float = 0.3, timeout_s: float = 600.0) -> None:
    """Wait until every record produced to a topic this process consumes has been processed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        c = rt.counters
        # Only topics a stage consumes: mv.changes, errors, changelogs and the like are outputs.
        pending = {t: c.produced[t] - c.consumed[t] for t in rt.stage_topics if c.produced[t] > c.consumed[t]}
        quiet = loop.time() - c.last_activity >= settle_s
        if not pending and not any(c.unsaved.values()) and not c.deferred and quiet:
            return
        if loop.time() > deadline:
            unsaved = {s: n for s, n in c.unsaved.items() if n}
            waiting = pending or unsaved or f"{c.deferred} objects' deferred reference answers"
            raise IdsyncError(f"pipeline did not drain within {timeout_s:.0f}s; waiting on {waiting}")
        await asyncio.sleep(0.05)


@dataclass
class CycleReport:
    imports: list[ImportReport] = field(default_factory=list)
    seconds: float = 0.0


def _exports_applied(rt: Runtime) -> int:
    return sum(
        v
        for k, v in rt.counters.steps.items()
        if k.split(":")[0] in ("export-add", "export-update", "export-rename", "export-delete")
    )


async def sync_cycle(p: Pipeline, confirm_rounds: int = 3) -> CycleReport:
    """Import targets, import sources, let sync and export run, then confirm exports by re-importing."""
    rt = p.rt
    started = time.monotonic()
    report = CycleReport()
    importable = {n: c for n, c in p.connectors.items() if isinstance(c, FullImport)}
    targets = [n for n in importable if n in rt.rules.targets]
    sources = [n for n in importable if n not in rt.rules.targets]
    for group in (targets, sources):
        if group:
            report.imports += await asyncio.gather(*(full_import(rt, n, importable[n]) for n in group))
            await drained(rt)
    for _ in range(confirm_rounds):
        applied = exports_applied(rt)
        if applied == rt.counters.steps["confirm-baseline"] or not targets:
            break
        rt.counters.steps["confirm-baseline"] = applied
        report.imports += await asyncio.gather(*(full_import(rt, n, importable[n]) for n in targets))
        await drained(rt)
    report.seconds = time.monotonic() - started
    return report


def summary(p: Pipeline) -> dict[str, dict[str, int]]:
    """Counts for the summary table: state sizes and run counters per connector."""
    rt = p.rt
    cs = {name: connector_space_size(rt.store("cs"), name) for name in rt.config.connectors}
    mv = 0
    for _p, _k, v in rt.store("mv").scan_all():
        if not unpack(v, MVObject).deleted:
            mv += 1
    per: dict[str, dict[str, int]] = {}
    for name in rt.config.connectors:
        steps = rt.counters.steps
        per[name] = {
            "cs_objects": cs[name],
            "imported": steps[f"imported:{name}"],
            "exports_applied": sum(
                steps[f"export-{op}:{name}"] for op in ("add", "update", "rename", "delete")
            ),
            "exports_confirmed": steps[f"export-confirmed:{name}"],
            "export_errors": steps[f"export-failed:{name}"],
        }
    per["metaverse"] = {"mv_objects": mv, "errors": rt.counters.steps["errors"]}
    return per


def format_errors(rt: Runtime, limit: int = 20) -> str:
    """The per-object errors of this run: type, where, why."""
    if not rt.errors:
        return ""
    lines = [f"per-object errors ({len(rt.errors)}):"]
    for e in rt.errors[:limit]:
        where = e.locator or e.anchor or e.mv_id or ""
        lines.append(f"  {e.error_type:<32} {e.step_id:<14} {where}: {e.message}")
    if len(rt.errors) > limit:
        lines.append(f"  ... and {len(rt.errors) - limit} more on topic {rt.names.errors_topic()}")
    return "\n".join(lines)


def exports_applied(rt: Runtime) -> int:
    """Exports applied so far, every target connector."""
    return sum(_applied(rt, name) for name in rt.rules.targets)


def _applied(rt: Runtime, name: str) -> int:
    return sum(rt.counters.steps[f"export-{op}:{name}"] for op in ("add", "update", "rename", "delete"))


def format_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: a header, a rule, rows; the first column left-aligned, the others right."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [
        line(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(out)


def format_summary(s: dict[str, Any], seconds: float) -> str:
    cols = ["cs_objects", "imported", "exports_applied", "exports_confirmed", "export_errors"]
    head = ["connector", "CS objects", "imported", "exports applied", "exports confirmed", "export errors"]
    rows = [
        [name] + [str(s[name][c]) for c in cols]
        for name in s
        if name not in ("metaverse", "cycles", "errors")
    ]
    out = format_table(head, rows).splitlines()
    m = s["metaverse"]
    out.append("")
    out.append(
        f"metaverse objects: {m['mv_objects']}   per-object errors: {m['errors']}   time: {seconds:.1f}s"
    )
    return "\n".join(out)


def run_pipeline(p: Pipeline, job: Callable[[Pipeline], Awaitable[int]], loglevel: str = "warn") -> int:
    """Run the faust worker with every agent, run ``job`` as a task, stop when it returns its exit code."""
    asyncio.run(ensure_topics(p.rt))
    result = {"code": 1}
    worker = faust.Worker(p.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # its escape codes would garble the summary
    tune_gc()

    async def main() -> None:
        try:
            result["code"] = await job(p)
        except IdsyncError as exc:
            log.error("%s", exc)
            result["code"] = 1
        except Exception:
            log.exception("job failed")
            result["code"] = 1
        finally:
            await p.rt.stop()
            await worker.stop()

    p.app.task(main)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        p.close()
    return result["code"]
