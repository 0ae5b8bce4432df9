"""The ``ainode`` command.

::

    ainode serve                      run the node (DICOM SCP, analysis, delivery)
    ainode analyze PATH... --out DIR  analyse files/folders offline, write result objects to DIR
    ainode route FILE...              which pipeline each file would go to, and why
    ainode echo [DEST]                C-ECHO a destination (or this node)
    ainode jobs                       recent jobs and their states
    ainode deliveries [--failed]      deliveries; 'ainode deliveries retry' re-queues dead letters
    ainode audit [--since T] [--study UID] [--kind K]   who sent what, what ran, where results went
    ainode models list|verify         the models, their weights and checksums
    ainode models build-demo [--out DIR] [--force] [--quick] [--only NAME]   demo weights from phantoms
    ainode train view-filter|finding-classifier|four-class|detector --data DIR [--out DIR] [trainer options]

Every command reads the same settings (``--config`` or ``$AINODE_CONFIG``,
then ``AINODE_*`` variables). Errors a user can fix are printed as one clear
message and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from node.db import AuditKind
from node.errors import AinodeError
from node.settings import Settings, load_settings

log = logging.getLogger("ainode.cli")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _setup_logging(settings: Settings) -> None:
    from node.logs import setup_logging

    # Libraries' INFO chatter (association details, highdicom's attribute copying) is not for administrators.
    setup_logging(settings.log_level, settings.log_format)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from node.service import Node

    node = Node(settings)
    # `kill -USR1 <pid>` prints every thread's stack: what a stuck node is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    http = None
    if settings.http_enabled:
        # Before the DICOM port: /healthz answers during recovery, /readyz says 503 until the port is open.
        try:
            http = node.http_server()
            http.start()
        except OSError as exc:
            # Receiving studies matters more than being watched: say so loudly and go on.
            log.error("HTTP endpoint not started: cannot listen on %s:%d: %s", settings.http_host,
                      settings.http_port, exc)
    try:
        node.start()
        where = f"; HTTP on {settings.http_host}:{http.port}" if http else ""
        ports = ", ".join(f"{scp.port}{' (TLS)' if scp is node.tls_scp else ''}" for scp in node.scps)
        print(f"ainode: {settings.ae_title} listening on port {ports}{where}; data in {settings.data_dir}",
              flush=True)
        stop.wait()
    finally:
        if http is not None:
            http.stop()
        node.stop()
    return 0


def cmd_route(settings: Settings, args: argparse.Namespace) -> int:
    from node.router import format_route_table, load_routing

    table, code = format_route_table([Path(p) for p in args.files], load_routing(settings.routing_file))
    print(table)
    return code


def cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from dimse.scu import AssociationFailed, echo
    from node import tls
    from node.settings import DicomDestinationSettings

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the outcome is printed below, once

    if args.destination:
        dest = settings.destinations.get(args.destination)
        if not isinstance(dest, DicomDestinationSettings):
            raise AinodeError(f"no DICOM destination named {args.destination!r} (have: {sorted(settings.destinations)})")
        host, port, called = dest.host, dest.port, dest.ae_title
        context = tls.destination_context(args.destination, dest)  # the same TLS as deliveries
    else:
        own = settings.port if settings.port is not None else settings.tls.port
        host, port, called = args.host or "127.0.0.1", args.port or own, args.called_ae or settings.ae_title
        # This node without a plain port: its TLS port, certificate not verified (a liveness check only).
        context = tls.probe_context(settings.tls) if settings.port is None and not args.port else None
    over = " over TLS" if context is not None else ""
    try:
        code = echo(host=host, port=port, called_ae=called, calling_ae=args.calling_ae or settings.ae_title,
                    timeout=args.timeout, ssl_context=context)
    except AssociationFailed as exc:
        cause = tls.handshake_error(host, port, context, timeout=args.timeout) if context is not None else None
        print(f"C-ECHO {called}@{host}:{port}{over} failed: {exc}{'; ' + cause if cause else ''}")
        return 1
    print(f"C-ECHO {called}@{host}:{port}{over}: status 0x{code:04X}{' (success)' if code == 0 else ''}")
    return 0 if code == 0 else 1


def _open_db(settings: Settings):  # type: ignore[no-untyped-def]
    from node.db import Database

    db = Database(settings.db_url())
    db.create_schema()
    return db


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from node.db import Job

    db = _open_db(settings)
    with db.session() as session:
        stmt = select(Job).order_by(Job.id.desc()).limit(args.limit)
        if args.state:
            stmt = stmt.where(Job.state == args.state)
        jobs = session.scalars(stmt).all()
        rows = [(j.id, j.state.value, j.pipeline, j.series_uid, j.generation, j.attempts,
                 (j.error or j.summary or "")[:100]) for j in jobs]
    print(_table(["id", "state", "pipeline", "series", "gen", "tries", "summary / error"], rows))
    return 0


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from node.db import Delivery, DeliveryState, Result
    from node.dispatcher import retry_dead

    db = _open_db(settings)
    if args.action == "retry":
        count = retry_dead(db, args.ids)
        print(f"{count} dead letter(s) queued for delivery again")
        return 0
    with db.session() as session:
        stmt = (select(Delivery, Result).join(Result, Result.id == Delivery.result_id)
                .order_by(Delivery.id.desc()).limit(args.limit))
        if args.failed:
            stmt = stmt.where(Delivery.state == DeliveryState.DEAD)
        rows = [(d.id, d.state.value, d.destination, r.kind, r.sop_uid, d.attempts, (d.last_error or "")[:80])
                for d, r in session.execute(stmt).all()]
    print(_table(["id", "state", "destination", "kind", "sop instance", "tries", "last error"], rows))
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from node.audit import format_events, query

    try:
        since = datetime.fromisoformat(args.since) if args.since else None
    except ValueError as exc:
        raise AinodeError(f"--since {args.since!r}: expected a time like 2026-11-22T10:00 (UTC)") from exc
    events = query(_open_db(settings), since=since, study=args.study, kinds=args.kind or (), limit=args.limit)
    headers, rows = format_events(events)
    print(_table(headers, rows))
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from models.registry import ModelRegistry

    if args.action == "build-demo":
        from models.train.demo import run_cli

        out = Path(args.out) if args.out else settings.models_dir
        return run_cli(out, force=args.force, quick=args.quick, only=args.only)

    registry = ModelRegistry.discover(settings.models_dir, settings.models_file)
    manifests = {m.name: m for m in registry.manifests()}
    statuses = registry.verify()  # every entry, invalid manifests included
    rows = []
    for st in statuses:
        m = manifests.get(st.name)
        detail = m.sha256[:16] if st.state == "ok" and m else st.message
        rows.append((st.name, m.version if m else "-", m.task if m else "-", m.backend if m else "-",
                     ("yes" if m.demo else "no") if m else "-", st.state, detail))
    print(_table(["model", "version", "task", "backend", "demo", "weights", "sha256 / problem"], rows))
    if args.action == "verify":
        return 0 if all(st.state == "ok" for st in statuses) else 1
    return 0


# `ainode train NAME`: the trainer's "module:main" and the model folder it writes by default.
TRAINERS: dict[str, tuple[str, str]] = {
    "view-filter": ("models.train.view_filter:main", "cxr-view-filter"),
    "finding-classifier": ("models.train.finding_classifier:main", "cxr-findings"),
    "four-class": ("models.train.four_class:main", "cxr-four-class"),
    "detector": ("models.train.detector:main", "cxr-detector"),
    "ct-pe": ("models.train.pe:main", "ct-pe"),
    "ct-lumbar": ("models.train.lumbar:main", "ct-lumbar"),
}


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    import importlib

    if args.model not in TRAINERS:
        raise AinodeError(f"unknown model {args.model!r} (trainers: {', '.join(TRAINERS)})")
    target, folder = TRAINERS[args.model]
    module_name, _, function = target.partition(":")
    try:
        train_main = getattr(importlib.import_module(module_name), function)
    except ImportError as exc:
        raise AinodeError(f"trainer {target} cannot be imported ({exc}); install the [train] extra") from exc
    argv = ["--data", args.data, "--out", args.out or str(settings.models_dir / folder)]
    return int(train_main(argv + list(args.extra)) or 0)


def cmd_analyze(settings: Settings, args: argparse.Namespace) -> int:
    from node.analyze import analyze_paths

    return analyze_paths(settings, [Path(p) for p in args.paths], Path(args.out), pipeline=args.pipeline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ainode", description="DICOM AI node")
    parser.add_argument("--config", help="node.yaml (default: $AINODE_CONFIG or config/node.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the node").set_defaults(func=cmd_serve)
    p = sub.add_parser("analyze", help="analyse DICOM files or folders offline")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True, help="folder for the result objects")
    p.add_argument("--pipeline", help="force a pipeline instead of routing")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("route", help="show which pipeline each file would go to")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_route)
    p = sub.add_parser("echo", help="C-ECHO a destination by name, or any AE")
    p.add_argument("destination", nargs="?")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--called-ae")
    p.add_argument("--calling-ae")
    p.add_argument("--timeout", type=float, default=10)
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--state", choices=["queued", "running", "done", "failed"])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser("deliveries", help="list deliveries, or 'retry' dead letters")
    p.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    p.add_argument("ids", nargs="*", type=int, help="with retry: only these deliveries")
    p.add_argument("--failed", action="store_true", help="only dead letters")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_deliveries)
    p = sub.add_parser("audit", help="the audit log: who sent what, what ran, where results went")
    p.add_argument("--since", help="only events at or after this UTC time, e.g. 2026-11-22T10:00")
    p.add_argument("--study", help="only events of this Study Instance UID")
    p.add_argument("--kind", action="append", choices=[k.value for k in AuditKind],
                   help="only events of this kind (repeatable)")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("models", help="list or verify models, or build the demo weights")
    p.add_argument("action", choices=["list", "verify", "build-demo"])
    p.add_argument("--out", help="build-demo: models directory to write (default: the settings' models_dir)")
    p.add_argument("--force", action="store_true", help="build-demo: rebuild even when up to date")
    p.add_argument("--quick", action="store_true", help="build-demo: tiny runs for tests (quality not checked)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="build-demo: only this recipe")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("train", help="train a model (extra [train])")
    p.add_argument("model", choices=list(TRAINERS))
    p.add_argument("--data", required=True)
    p.add_argument("--out")
    p.set_defaults(func=cmd_train)  # further options (--steps, --seed, ...) go to the trainer
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        settings = load_settings(args.config)
        _setup_logging(settings)
        return int(args.func(settings, args))
    except AinodeError as exc:
        print(f"ainode: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from models.errors import ModelError as ModelsError

        if isinstance(exc, ModelsError):
            print(f"ainode: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
