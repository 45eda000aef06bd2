"""The ``idsync`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

from schemas.codec import as_dict
from schemas.config import Compression
from schemas.errors import ConfigError, FatalError, IdsyncError
from streams.config import advice, load_config
from streams.native import StaleEngine, check_engine_fresh
from streams.runtime import Settings

log = logging.getLogger("idsync")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _pipeline_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``idsync bench --pipeline``: a ``pipeline`` field, its value read as YAML (the
    configuration file's validation then checks it, naming the field)."""
    import yaml

    from schemas.config import PipelineConfig

    key, sep, value = text.partition("=")
    key = key.strip()
    own = {
        "partitions": "--partitions",
        "checkpoint_interval_ms": "--checkpoint-ms",
        "compression": "--compression",
    }
    if key in own:
        raise argparse.ArgumentTypeError(f"{text!r}: use {own[key]}")
    if not sep or key not in PipelineConfig.model_fields:
        known = ", ".join(sorted(set(PipelineConfig.model_fields) - set(own)))
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY one of {known}")
    return key, yaml.safe_load(value)


def _settings(args: argparse.Namespace, embedded_bootstrap: str | None) -> Settings:
    data_dir = Path(args.data_dir).resolve()
    wait = getattr(args, "fetch_max_wait_ms", None)
    if wait is None:
        # The embedded broker holds fetches for their whole wait (streams.app): keep it short there.
        wait = 10 if embedded_bootstrap else 500
    return Settings(
        bootstrap_servers=embedded_bootstrap or args.bootstrap_servers,
        data_dir=data_dir,
        fetch_max_wait_ms=wait,
        memory_log_s=getattr(args, "memory_log_seconds", None) or 0.0,
    )


#: Written into the state directory when an ``idsync sync`` on the embedded broker finished.
CLEAN_MARKER = "LAST-SYNC-FINISHED"


def cmd_sync(args: argparse.Namespace) -> int:
    from streams.app import create_app
    from streams.broker import EmbeddedBroker
    from streams.memory import tune_malloc
    from streams.store import STATE_FORMAT, UPGRADES, state_format
    from streams.sync import exports_applied, format_errors, format_summary, run_pipeline, summary, sync_cycle

    config = load_config(Path(args.config))
    tune_malloc()
    data_dir = Path(args.data_dir).resolve()
    broker = None
    clean = data_dir / "state" / CLEAN_MARKER
    if not args.bootstrap_servers:
        # Memory-only broker: its topics start empty. The local state of the last run is kept when that run
        # finished (nothing was in flight): each store seeds its empty changelog from it
        # (streams.consumer.restore), so this run knows what the last one imported and exported, and an
        # object gone from a source since is deleted, not forgotten. After a run that was killed, state
        # that waits for messages the old broker took with it is dropped, and so is state an older idsync
        # wrote in another format: the run starts from empty (the targets' existing objects join again).
        if not clean.exists() or state_format(data_dir / "state") not in {None, STATE_FORMAT, *UPGRADES}:
            shutil.rmtree(data_dir / "state", ignore_errors=True)
        clean.unlink(missing_ok=True)
        broker = EmbeddedBroker(data_dir).start()
        print(f"embedded broker on {broker.bootstrap} (memory storage)", file=sys.stderr)
    try:
        exports = not getattr(args, "no_export", False)
        pipeline = create_app(_settings(args, broker.bootstrap if broker else None), config, exports=exports)
        started = time.monotonic()

        async def job(p: object) -> int:
            cycles = []
            for i in range(args.cycles):
                before = exports_applied(pipeline.rt)
                report = await sync_cycle(pipeline)
                cycles.append({"exports_applied": exports_applied(pipeline.rt) - before})
                log.info("cycle %d done in %.1fs", i + 1, report.seconds)
            result.update(summary(pipeline))
            result["cycles"] = cycles
            result["errors"] = [as_dict(e, drop_none=True) for e in pipeline.rt.errors]
            print(format_summary(result, time.monotonic() - started))
            if any(k.startswith("stopped-deletion-threshold-exceeded:") for k in pipeline.rt.counters.steps):
                # MIM's run result; the held deletes wait for `idsync approve-deletes` (docs/export.md).
                result["result"] = "stopped-deletion-threshold-exceeded"
                print("run result: stopped-deletion-threshold-exceeded (deletes held, see the errors)")
            errors = format_errors(pipeline.rt)
            if errors:
                print(errors)
            return 0

        result: dict[str, Any] = {}
        code = run_pipeline(pipeline, job, loglevel="info" if args.verbose else "warn")
        if broker is not None and code == 0 and result:
            clean.write_text("the last sync finished: its state may seed the next run's empty broker\n")
        if args.json and result:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return code
    finally:
        if broker is not None:
            broker.stop()


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import create_app
    from streams.memory import tune_malloc
    from streams.worker import run_worker

    if not args.bootstrap_servers:
        raise ConfigError("idsync worker needs --bootstrap-servers (or IDSYNC_BOOTSTRAP_SERVERS)")
    config = load_config(Path(args.config))
    tune_malloc()
    pipeline = create_app(_settings(args, None), config, exports=not args.no_export)
    return run_worker(pipeline, loglevel="info" if args.verbose else "warn")


def cmd_import(args: argparse.Namespace) -> int:
    from streams.follow import import_command

    args.config_path = Path(args.config)
    return import_command(args, _settings(args, None))


def _operator(args: argparse.Namespace, action: Callable[[Any], Awaitable[Any]], topics: bool = True) -> Any:
    """Run one operator command against the cluster (``--bootstrap-servers``): returns (runtime, result)."""
    import asyncio

    from streams.app import ensure_topics
    from streams.runtime import Runtime

    if not args.bootstrap_servers:
        raise ConfigError(f"idsync {args.command} needs --bootstrap-servers (or IDSYNC_BOOTSTRAP_SERVERS)")
    rt = Runtime(_settings(args, None), load_config(Path(args.config)))

    async def run() -> Any:
        try:
            if topics:
                await ensure_topics(rt)
            return await action(rt)
        finally:
            await rt.stop()

    return rt, asyncio.run(run())


def cmd_approve_deletes(args: argparse.Namespace) -> int:
    from streams.pending import approve_deletes

    rt, approval = _operator(args, lambda rt: approve_deletes(rt, args.connector))
    print(
        f"approval {approval.approval_id} published on {rt.partitions} partitions of "
        f"{rt.names.export_topic(args.connector)}: the export workers release the deletes held before it"
    )
    return 0


def cmd_operator_link(args: argparse.Namespace) -> int:
    from streams.operator import publish_operator_link

    mv_id = getattr(args, "mv_id", None)
    rt, record = _operator(
        args, lambda rt: publish_operator_link(rt, args.connector, args.anchor, args.command, mv_id)
    )
    if args.command == "join":
        what = f"an explicit connector of metaverse object {args.mv_id}"
    elif args.command == "disjoin":
        what = "an explicit disconnector (the rules never join or project it)"
    else:
        what = "a normal connector or disconnector again (the rules decide)"
    print(
        f"request {record.request_id}: {args.connector} object {args.anchor} becomes {what}; published on "
        f"{rt.names.links_topic()} (the connector space shows the result; a refusal is a per-object error)"
    )
    return 0


def cmd_pending_exports(args: argparse.Namespace) -> int:
    from streams.pending import fold, format_pending, pending_json, read_pending

    _rt, pending = _operator(args, lambda rt: read_pending(rt, args.connector), topics=False)
    nets = fold(pending)
    print(pending_json(nets) if args.json else format_pending(nets))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from streams.bench.run import run_bench

    return run_bench(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(args)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    print(
        f"{args.config}: ok ({len(config.connectors)} connectors, {len(config.inbound)} inbound rules, "
        f"{len(config.outbound)} outbound rules)"
    )
    for line in advice(config):
        print(f"{args.config}: advice: {line}")
    return 0


def cmd_schema_export(args: argparse.Namespace) -> int:
    from streams.schemas_export import export_schemas

    for path in export_schemas(Path(args.out)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idsync", description="Streaming identity synchronization engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    def pipeline_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
        p.add_argument(
            "--bootstrap-servers",
            default=os.environ.get("IDSYNC_BOOTSTRAP_SERVERS", ""),
            help="Kafka bootstrap servers; default: start the embedded broker",
        )
        p.add_argument(
            "--data-dir",
            default=os.environ.get("IDSYNC_DATA_DIR", ".idsync"),
            help="local state directory (RocksDB)",
        )

    p = sub.add_parser(
        "sync", help="one sync cycle: import, sync, export, confirming import; print a summary"
    )
    pipeline_args(p)
    p.add_argument("--cycles", type=int, default=1, help="run this many cycles in one process")
    p.add_argument("--json", help="also write the summary as JSON to this file")
    p.add_argument("--no-export", action="store_true", help="staging mode: sync, but export nothing")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("worker", help="run the sync and export agents until stopped (SIGTERM/SIGINT)")
    pipeline_args(p)
    p.add_argument("--no-export", action="store_true", help="staging mode: sync, but export nothing")
    p.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=int(os.environ["IDSYNC_FETCH_MAX_WAIT_MS"])
        if os.environ.get("IDSYNC_FETCH_MAX_WAIT_MS")
        else None,
        help="consumer fetch wait; default 500 (Kafka), use ~10 against the embedded broker",
    )
    p.add_argument(
        "--memory-log-seconds",
        type=float,
        default=None,
        help="log where the worker's memory is (resident, malloc, Python, RocksDB) this often",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("import", help="run one connector's import: full, delta, or follow until stopped")
    p.add_argument("connector", help="connector name in the configuration")
    pipeline_args(p)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--full", dest="mode", action="store_const", const="full", help="bracketed full import")
    m.add_argument(
        "--delta", dest="mode", action="store_const", const="delta", help="changes since the watermark"
    )
    m.add_argument("--follow", dest="mode", action="store_const", const="follow", help="follow until stopped")
    p.set_defaults(func=cmd_import, mode=None)

    p = sub.add_parser("approve-deletes", help="release the deletes held by a target's deletion threshold")
    pipeline_args(p)
    p.add_argument("connector", help="the export target whose held deletes to release")
    p.set_defaults(func=cmd_approve_deletes)

    for command, what in (
        ("join", "make a connector-space object an explicit connector of a metaverse object"),
        ("disjoin", "make a connector-space object an explicit disconnector"),
        ("release", "make an explicit (dis)connector a normal one again (rules decide)"),
    ):
        p = sub.add_parser(command, help=what)
        pipeline_args(p)
        p.add_argument("connector", help="connector name in the configuration")
        p.add_argument("anchor", help="the object's anchor in that connector's space")
        if command == "join":
            p.add_argument("mv_id", help="the metaverse object to join")
        p.set_defaults(func=cmd_operator_link)

    p = sub.add_parser("pending-exports", help="what would be exported to a target (staging mode preview)")
    pipeline_args(p)
    p.add_argument("connector", help="the export target")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_pending_exports)

    p = sub.add_parser("bench", help="benchmark on a synthetic organisation; prints a table, writes JSON")
    p.add_argument("--sizes", default="10000,100000", help="identity counts, comma-separated")
    p.add_argument("--workers", default="1,2", help="worker process counts to compare, comma-separated")
    p.add_argument(
        "--rate", type=int, default=1000, help="offered delta load for the latency run (changes/s)"
    )
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the latency run")
    p.add_argument(
        "--sustained",
        type=int,
        default=20_000,
        help="title changes of people already synced, published at once at the end of each pipeline "
        "phase: the rate the loaded pipeline sustains for changes (staging, flow, export planning; no join); "
        "0: skip",
    )
    p.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the naive per-event faust baseline",
    )
    p.add_argument(
        "--naive-max",
        type=int,
        default=10_000,
        help="largest N to run the naive baseline at (per event it re-syncs a large group for every member "
        "that resolves: its cost grows faster than N)",
    )
    p.add_argument(
        "--ldap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure applied LDAP writes (throwaway slapd)",
    )
    p.add_argument(
        "--imports",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each connector's full import from the real systems: the HR file, PostgreSQL "
        "(--postgres-url) and a throwaway slapd",
    )
    p.add_argument(
        "--load-bytes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after each initial load, measure the uncompressed bytes it wrote to the state changelogs and "
        "mv.changes (streams.bench.topic_bytes; reads them all: about a second per 20,000 records)",
    )
    p.add_argument(
        "--digest",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after each initial load, digest what its pending exports leave in the directory (also "
        "without the naive baseline, which always gets one): two versions of idsync that decide the same "
        "print the same digest (reads every pending export)",
    )
    p.add_argument(
        "--kinds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the internal topics' messages by kind after each pipeline phase (reads them all: "
        "about a second per 20,000 messages)",
    )
    p.add_argument(
        "--postgres-url",
        help="PostgreSQL for the imports phase, a postgresql+psycopg:// URL (default "
        "postgresql+psycopg://postgres@127.0.0.1:5432/test; "
        "a schema is created there and dropped afterwards)",
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--checkpoint-ms",
        type=int,
        default=1000,
        help="pipeline.checkpoint_interval_ms of the batched pipeline (default 1000; 0: save every batch)",
    )
    p.add_argument(
        "--compression",
        choices=get_args(Compression),
        default="zstd",
        help="pipeline.compression of the batched pipeline and the generated imports (default zstd, "
        "as the pipeline's)",
    )
    p.add_argument(
        "--pipeline",
        type=_pipeline_setting,
        action="append",
        metavar="KEY=VALUE",
        help="a further pipeline setting of the batched pipeline, e.g. state_cache_mb=256 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", default="bench.json", help="write the figures here")
    p.add_argument("--work-dir", help="keep working files here (default: a temp dir, removed)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="HR CSV -> throwaway slapd on the embedded broker, with a summary")
    p.add_argument("--hr", help="HR CSV to use instead of the bundled sample")
    p.add_argument("--keep", action="store_true", help="keep the demo's working directory")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("schema", help="topic contracts")
    ssub = p.add_subparsers(dest="schema_command", required=True)
    e = ssub.add_parser("export", help="write the JSON Schema of every topic contract")
    e.add_argument("--out", default="schemas-json")
    e.set_defaults(func=cmd_schema_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        check_engine_fresh()
        code = int(args.func(args))
    except ConfigError as exc:
        print("idsync: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
        code = 2
    except FatalError as exc:
        print(f"idsync: {exc.error_type}: {exc}", file=sys.stderr)
        code = 2
    except IdsyncError as exc:
        print(f"idsync: {exc}", file=sys.stderr)
        code = 1
    except StaleEngine as exc:
        print(f"idsync: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
