"""The ``ainode`` command.

::

    ainode serve                      run the node (DICOM SCP, analysis, delivery)
    ainode worker [--queues Q,..] [--device D]   analysis only, for executor: celery (jobs from the broker)
    ainode analyze PATH... --out DIR  analyse files/folders offline, write result objects to DIR
    ainode route FILE...              which pipeline each file would go to, and why
    ainode echo [DEST]                C-ECHO a destination (or this node)
    ainode jobs [show ID]             recent jobs and their states; 'show' prints one job in full
    ainode deliveries [--failed]      deliveries; 'retry' re-queues dead letters, 'show ID' prints one in full
    ainode audit [--since T] [--until T] [--study UID] [--kind K] [--caller AE] [--peer ADDR]   the audit log
    ainode purge [--dry-run]          remove finished studies' files by the retention policy (or list them)
    ainode models list|verify         the models, their weights and checksums
    ainode sample cxr|ct-pe|ct-lumbar --out DIR [--send AE@HOST:PORT]   a synthetic study, written and sent
    ainode pull --source NAME (--accession A | --study UID) [--series UID]   a study from a PACS into the node
    ainode hash-password              a password hash for http_users (reads the password from the terminal or stdin)
    ainode viewer [--host H] [--port P]   the OHIF viewer, its DICOMweb data source proxied (viewer: settings)
    ainode --version

Every command reads the same settings (``--config`` or ``$AINODE_CONFIG``,
then ``AINODE_*`` variables). Errors a user can fix are printed as one clear
message and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from core.table import format_table
from node.db import AuditKind, Database
from node.errors import ConfigError, NodeError
from node.settings import Settings, load_settings

log = logging.getLogger("ainode.cli")


def _terminal_width() -> int | None:
    """Columns to fit a table into: ``$COLUMNS``, else the terminal's; ``None`` when writing to a pipe or file."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _setup_logging(settings: Settings) -> None:
    from node.logs import setup_logging

    # Libraries' INFO chatter (association details, highdicom's attribute copying) is not for administrators.
    setup_logging(settings.log_level, settings.log_format)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from node.banner import banner_lines, echo_destinations, emit
    from node.service import Node

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if settings.executor == "celery" and not _wait_for_services(settings, stop):
        return 0  # stopped while waiting: nothing was started
    node = Node(settings)
    # `kill -USR1 <pid>` prints every thread's stack: what a stuck node is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    http = None
    try:
        if settings.http_enabled:
            # Before the DICOM port: /healthz answers during recovery, /readyz says 503 until the port is open.
            # A taken port stops start-up (ConfigError): a node nobody can watch is not what was configured.
            http = node.http_server()
            http.start()
            from node.preflight import http_exposure_warning

            warning = http_exposure_warning(settings)
            if warning:
                log.warning("%s", warning)
        node.start()
        emit(banner_lines(node, http.port if http else None))
        echo_destinations(settings)  # in the background: start-up does not wait for the PACS
        stop.wait()
    finally:
        if http is not None:
            http.stop()
        node.stop()
    return 0


def _distributed() -> ModuleType:
    """:mod:`node.distributed`, or one line naming the extra to install when Celery is missing."""
    try:
        import node.distributed
    except ImportError as exc:
        raise ConfigError(
            f"executor: celery needs the 'distributed' extra ({exc.name or exc} is not installed): "
            "pip install 'ainode[distributed]'"
        ) from exc
    return node.distributed


def _wait_for_services(settings: Settings, stop: threading.Event) -> bool:
    """``executor: celery``: wait for the database and the broker (back-off, one log line per wait)."""
    from node.preflight import prepare_data_dir, wait_for_database

    wait_for_broker = _distributed().wait_for_broker

    prepare_data_dir(settings)
    db = wait_for_database(settings, stop)
    if db is None:
        log.info("ainode stopped while waiting for the database")
        return False
    db.dispose()
    if not wait_for_broker(settings, stop):
        log.info("ainode stopped while waiting for the broker")
        return False
    return True


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    run_worker = _distributed().run_worker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # while waiting for the services; Celery then has its own
        signal.signal(sig, lambda *_: stop.set())
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run_worker(settings, queues=queues, concurrency=args.concurrency, stop=stop, device=args.device)


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
            raise NodeError(f"no DICOM destination named {args.destination!r} (have: {sorted(settings.destinations)})")
        host, port, called = dest.host, dest.port, dest.ae_title
        context = tls.destination_context(args.destination, dest)  # the same TLS as deliveries
    else:
        own = settings.port if settings.port is not None else settings.tls.port
        host, port, called = args.host or "127.0.0.1", args.port or own, args.called_ae or settings.ae_title
        # This node without a plain port: its TLS port, certificate not verified (a liveness check only).
        context = tls.probe_context(settings.tls) if settings.port is None and not args.port else None
    over = " over TLS" if context is not None else ""
    try:
        code = echo(
            host=host,
            port=port,
            called_ae=called,
            calling_ae=args.calling_ae or settings.ae_title,
            timeout=args.timeout,
            ssl_context=context,
        )
    except AssociationFailed as exc:
        cause = tls.handshake_error(host, port, context, timeout=args.timeout) if context is not None else None
        print(f"C-ECHO {called}@{host}:{port}{over} failed: {exc}{'; ' + cause if cause else ''}")
        return 1
    print(f"C-ECHO {called}@{host}:{port}{over}: status 0x{code:04X}{' (success)' if code == 0 else ''}")
    return 0 if code == 0 else 1


def _open_db(settings: Settings) -> Database:
    """The node's database for reading what it recorded; no database yet is a one-line error, not a new file."""
    from node.preflight import open_database

    return open_database(settings, create=False)


def _when(moment: object) -> str:
    """A database time as ``2026-11-22 10:00:05`` (UTC), or ``-``."""
    from datetime import datetime

    return moment.strftime("%Y-%m-%d %H:%M:%S") if isinstance(moment, datetime) else "-"


def _details(fields: Sequence[tuple[str, object]]) -> str:
    """``key: value`` lines, every value whole (multi-line values indented)."""
    width = max(len(k) for k, _ in fields)
    lines = []
    for key, value in fields:
        text = "-" if value is None or value == "" else str(value)
        first, *rest = text.splitlines() or [""]
        lines.append(f"{key.ljust(width)}  {first}")
        lines += [" " * (width + 2) + line for line in rest]
    return "\n".join(lines)


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from node.web.queries import NotFound, job_detail, recent_jobs

    db = _open_db(settings)
    if args.action == "show":
        if args.id is None:
            raise NodeError("ainode jobs show ID: name the job (its id in 'ainode jobs')")
        try:
            detail = job_detail(db, args.id)
        except NotFound:
            raise NodeError(f"no job {args.id} (see 'ainode jobs')") from None
        job = detail.job
        sent = []
        for r in detail.results:
            sent += [f"{r.kind} {r.sop_uid} -> {d.destination}: {d.state} (delivery {d.id})" for d in r.deliveries]
            sent += [] if r.deliveries else [f"{r.kind} {r.sop_uid}"]
        print(
            _details(
                [
                    ("job", job.id),
                    ("state", job.state),
                    ("pipeline", job.pipeline),
                    ("rule", job.rule),
                    ("priority", job.priority + (f" ({job.priority_reason})" if job.priority_reason else "")),
                    ("study", job.study_uid),
                    ("series", job.series_uid),
                    ("generation", detail.generation),
                    ("tries", job.attempts),
                    ("created", _when(job.created_at)),
                    ("started", _when(job.started_at)),
                    ("finished", _when(job.finished_at)),
                    ("worker", detail.worker),
                    ("destinations", ", ".join(detail.destinations) or "default"),
                    ("summary", job.summary),
                    ("error", job.error),
                    ("results", "\n".join(sent) or "none"),
                ]
            )
        )
        return 0
    rows = [
        (
            j.id,
            j.state,
            j.priority,
            j.pipeline,
            _when(j.created_at),
            _when(j.finished_at),
            j.study_uid,
            j.attempts,
            j.error or j.summary or "",
        )
        for j in recent_jobs(db, state=args.state, limit=args.limit)
    ]
    table = format_table(
        ["id", "state", "priority", "pipeline", "created", "finished", "study", "tries", "summary / error"],
        rows,
        width=_terminal_width(),
    )
    print(table)
    if "…" in table:
        print("(cells cut to fit end in '…': 'ainode jobs show ID' shows all)")
    return 0


def _operator() -> str | None:
    """The operating-system user running a command, for the audit of its actions (``None``: unknown)."""
    import getpass

    try:
        return getpass.getuser()[:16] or None
    except (OSError, KeyError):  # no login name and no passwd entry (a container's arbitrary uid)
        return None


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from node.dispatcher import retry_dead
    from node.web.queries import NotFound, get_delivery, list_deliveries

    db = _open_db(settings)
    if args.action == "retry":
        count = retry_dead(db, args.ids, caller=_operator())
        print(f"{count} dead letter(s) queued for delivery again")
        return 0
    if args.action == "show":
        if len(args.ids) != 1:
            raise NodeError("ainode deliveries show ID: name one delivery (its id in 'ainode deliveries')")
        try:
            d = get_delivery(db, args.ids[0], settings.delivery)
        except NotFound:
            raise NodeError(f"no delivery {args.ids[0]} (see 'ainode deliveries')") from None
        schedule: list[tuple[str, object]] = []
        if d.failing_since is not None:
            tries = f" or try {d.dead_letter_after_tries}" if d.dead_letter_after_tries else ""
            schedule = [
                ("failing since", _when(d.failing_since)),
                ("next try", _when(d.next_attempt_at)),
                ("dead letter after", _when(d.dead_letter_after) + tries),
            ]
        print(
            _details(
                [
                    ("delivery", d.id),
                    ("state", d.state),
                    ("destination", d.destination),
                    ("tries", d.attempts),
                    ("created", _when(d.created_at)),
                    ("delivered", _when(d.delivered_at)),
                    *(
                        [("storage commitment", d.commitment_uid), ("committed", _when(d.committed_at))]
                        if d.commitment_uid
                        else []
                    ),
                    *schedule,
                    ("kind", d.kind),
                    ("sop instance", d.sop_uid),
                    ("study", d.study_uid),
                    ("source series", d.series_uid),
                    ("job", d.job_id),
                    ("file", "(removed by retention)" if d.path is None else d.path),
                    ("last error", d.last_error),
                ]
            )
        )
        return 0
    rows = [
        (
            d.id,
            d.state,
            d.destination,
            d.kind,
            _when(d.created_at),
            _when(d.delivered_at),
            d.study_uid,
            d.attempts,
            d.last_error or "",
        )
        for d in list_deliveries(db, states=["dead"] if args.failed else [], limit=args.limit)
    ]
    table = format_table(
        ["id", "state", "destination", "kind", "created", "delivered", "study", "tries", "last error"],
        rows,
        width=_terminal_width(),
    )
    print(table)
    if "…" in table:
        print("(cells cut to fit end in '…': 'ainode deliveries show ID' shows all)")
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from node.audit import format_events, query

    moments: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        try:
            moments[name] = datetime.fromisoformat(text) if text else None
        except ValueError as exc:
            raise NodeError(f"--{name} {text!r}: expected a time like 2026-11-22T10:00 (UTC)") from exc
    events = query(
        _open_db(settings),
        since=moments["since"],
        until=moments["until"],
        study=args.study,
        kinds=args.kind or (),
        caller=args.caller,
        peer=args.peer,
        limit=args.limit,
    )
    headers, rows = format_events(events)
    print(format_table(headers, rows))
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Apply the retention policy now (``--dry-run``: only list what would go)."""
    from node.db import utcnow
    from node.retention import disk_state, plan_purge, purge

    db = _open_db(settings)
    try:
        free, total = disk_state(settings)
    except OSError as exc:
        raise NodeError(
            f"cannot read the free space of the data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from exc
    plan = plan_purge(db, settings, utcnow(), free, total)
    policy = settings.retention
    print(
        f"free space {100 * free:.1f} % (watermark {policy.min_free_percent:g} %), keep {policy.keep_hours:g} h "
        f"after delivery; {plan.unfinished_series} series and {plan.unfinished_results} result(s) unfinished, kept"
    )
    if not plan.items:
        print("nothing to purge")
        return 0
    rows = [(item.kind, item.study_uid, item.series_uid, item.files, item.bytes, item.reason) for item in plan.items]
    if args.dry_run:
        print(format_table(["kind", "study", "series", "files", "bytes", "reason"], rows))
        print(f"would purge {plan.files} file(s), {plan.bytes} bytes (dry run: nothing removed)")
        return 0
    outcome = purge(db, settings, plan)
    kept = f"; {outcome.skipped} kept (received again or no longer finished)" if outcome.skipped else ""
    print(f"purged {outcome.files} file(s), {outcome.bytes} bytes{kept}")
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from node.web.queries import list_models

    models = list_models(settings.models_dir, settings.models_file)
    rows = [
        (
            m.name,
            m.version or "-",
            m.task or "-",
            m.backend or "-",
            "-" if m.demo is None else ("yes" if m.demo else "no"),
            m.weights,
            (m.sha256 or "")[:16] if m.weights == "ok" else m.problem,
        )
        for m in models
    ]
    print(format_table(["model", "version", "task", "backend", "demo", "weights", "sha256 / problem"], rows))
    if args.action == "verify":
        return 0 if all(m.weights == "ok" for m in models) else 1
    return 0


#: The calling AE title of ``ainode sample --send`` to a peer other than the node (a modality's, as it were).
SAMPLE_CALLING_AE = "MODALITY"


def cmd_sample(settings: Settings, args: argparse.Namespace) -> int:
    from node.sample import parse_address, write_sample

    address = parse_address(args.send) if args.send else None  # a typo is reported before any file is written
    study = write_sample(args.kind, Path(args.out))
    for path in study.paths:
        print(path)
    print(f"{len(study.paths)} file(s): {study.description}; routes to pipeline {study.pipeline}")
    print(f"study {study.study_uid}")
    if address is None:
        return 0
    from core import status as dimse_status
    from dimse.scu import AssociationFailed, store_files

    called, host, port = address
    # To the node itself: its own AE title, which it accepts from this machine. To anyone else (Orthanc): not the
    # node's AE title, which the README's Orthanc script treats as the node's results and never forwards.
    calling = args.calling_ae or (settings.ae_title if called == settings.ae_title else SAMPLE_CALLING_AE)
    try:
        outcomes = store_files(
            study.paths, host=host, port=port, called_ae=called, calling_ae=calling, timeout=args.timeout
        )
    except AssociationFailed as exc:
        hint = f"; is {calling} in the peer's allowed list? (--calling-ae names another)" if exc.permanent else ""
        print(f"C-STORE to {called}@{host}:{port} as {calling} failed: {exc}{hint}")
        return 1
    for path, outcome in zip(study.paths, outcomes, strict=False):
        print(f"C-STORE {path.name}: status 0x{outcome.status:04X} ({dimse_status.describe(outcome.status)})")
    sent = sum(o.succeeded for o in outcomes)
    print(f"sent {sent}/{len(outcomes)} to {called}@{host}:{port} as {calling}")
    return 0 if sent == len(outcomes) else 1


def cmd_pull(settings: Settings, args: argparse.Namespace) -> int:
    """Pull a study from a source into the running node (see the command's help)."""
    import tempfile

    from node import tls
    from node.pull import ForwardingIntake, PullArgumentError, Puller, PullError

    for name in ("pynetdicom", "dicomweb_client", "ainode.pull", "ainode.dimse"):  # one line is printed below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # The running node: its plain port on this machine, else its TLS port (certificate not verified: loopback).
    own = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    port = settings.port if settings.port is not None else settings.tls.port
    context = tls.probe_context(settings.tls) if settings.port is None else None
    db = _open_db(settings)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="pull-", dir=settings.tmp_dir) as folder:
            intake = ForwardingIntake(
                Path(folder),
                host=own,
                port=port,
                called_ae=settings.ae_title,
                calling_ae=settings.ae_title,
                timeout=args.timeout,
                ssl_context=context,
            )
            result = Puller(settings, db, intake).pull(
                args.source, accession=args.accession, study_uid=args.study, series_uid=args.series
            )
    except PullArgumentError as exc:
        print(f"ainode pull: {exc}", file=sys.stderr)
        return 2
    except PullError as exc:
        print(f"ainode pull: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(result.message)
    return 1 if result.failed else 0


def cmd_hash_password(settings: Settings, args: argparse.Namespace) -> int:
    from node.web.auth import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise NodeError("the two passwords differ; nothing printed")
    else:  # a pipe: one line (never an argument, which 'ps' and the shell's history would show)
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise NodeError("a password needs at least 8 characters")
    print(hash_password(password))
    return 0


def cmd_analyze(settings: Settings, args: argparse.Namespace) -> int:
    from node.analyze import analyze_paths

    return analyze_paths(settings, [Path(p) for p in args.paths], Path(args.out), pipeline=args.pipeline)


def cmd_viewer(settings: Settings, args: argparse.Namespace) -> int:
    from node.viewer import run

    if args.host is not None or args.port is not None:
        changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = settings.model_copy(update={"viewer": settings.viewer.model_copy(update=changes)})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run(settings, stop)


def cmd_conformance(settings: Settings, args: argparse.Namespace) -> int:
    from node.banner import version
    from node.conformance import statement

    text = statement(version())
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


#: The end of every command's --help: which configuration it reads (the same as 'ainode serve').
CONFIG_HELP = """configuration (the same for every command as for 'ainode serve'):
  1. the file given by 'ainode --config FILE COMMAND', else $AINODE_CONFIG,
     else config/node.yaml of this installation (no file: embedded defaults);
  2. then AINODE_<KEY> environment variables override single keys, nested keys
     joined by '__': AINODE_DATA_DIR=/srv/ainode, AINODE_DELIVERY__MAX_ATTEMPTS=5.
  Run a command with the node's own configuration and environment to see its data."""


def build_parser() -> argparse.ArgumentParser:
    from node.banner import version

    parser = argparse.ArgumentParser(
        prog="ainode",
        description="DICOM AI node",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="node.yaml (default: $AINODE_CONFIG or config/node.yaml)")
    parser.add_argument("--version", action="version", version=f"ainode {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the node").set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "worker",
        help="run analysis only, for 'executor: celery': consume jobs from the broker",
        description="A Celery worker of the node (executor: celery): it waits for the database "
        "(database_url) and the broker (celery.broker_url), builds the pipelines of its queues, and runs "
        "the jobs 'ainode serve' publishes. Run any number, on any machine sharing the database and storage.",
    )
    p.add_argument(
        "--queues", help="comma-separated queues to consume (default: celery.default_queue and those of celery.queues)"
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs at a time: worker processes (default 1)")
    p.add_argument(
        "--device", help="the device whose ONNX Runtime providers the models use (a name of devices; default: device)"
    )
    p.set_defaults(func=cmd_worker)
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
    p = sub.add_parser("jobs", help="list jobs (times in UTC), or 'show ID' for one job in full")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("id", nargs="?", type=int, help="with show: the job's id")
    p.add_argument("--state", choices=["queued", "running", "done", "failed"])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser(
        "deliveries", help="list deliveries (times in UTC), 'retry' dead letters, or 'show ID' for one in full"
    )
    p.add_argument("action", nargs="?", choices=["list", "retry", "show"], default="list")
    p.add_argument("ids", nargs="*", type=int, help="with retry: only these deliveries; with show: the one to show")
    p.add_argument("--failed", action="store_true", help="only dead letters")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_deliveries)
    p = sub.add_parser("audit", help="the audit log: who sent what, what ran, where results went")
    p.add_argument("--since", help="only events at or after this UTC time, e.g. 2026-11-22T10:00")
    p.add_argument("--until", help="only events before this UTC time")
    p.add_argument("--study", help="only events of this Study Instance UID")
    p.add_argument("--caller", help="only events of this calling AE title or HTTP user")
    p.add_argument("--peer", help="only events from this address")
    p.add_argument(
        "--kind", action="append", choices=[k.value for k in AuditKind], help="only events of this kind (repeatable)"
    )
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("purge", help="remove delivered studies' files now by the retention policy (rows kept)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed, and why")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("models", help="list or verify the models (train and build them with ainode-train)")
    p.add_argument("action", choices=["list", "verify"])
    p.set_defaults(func=cmd_models)
    p = sub.add_parser(
        "sample",
        help="write a synthetic sample study (and send it by C-STORE)",
        description="Write a small synthetic study that the shipped routing sends to a pipeline: "
        "cxr (one chest radiograph), ct-pe (a CT pulmonary angiography series), "
        "ct-lumbar (an abdominal CT). Phantoms, no patient data.",
    )
    p.add_argument("kind", choices=["cxr", "ct-pe", "ct-lumbar"])
    p.add_argument("--out", required=True, help="folder to write the files into (created if needed)")
    p.add_argument(
        "--send",
        metavar="AE@HOST:PORT",
        help="then send them by C-STORE, e.g. AINODE@127.0.0.1:11112 or ORTHANC@127.0.0.1:4242",
    )
    p.add_argument(
        "--calling-ae",
        help="our AE title when sending (default: the node's ae_title when sending to the "
        f"node, which accepts it from this machine; {SAMPLE_CALLING_AE} to anyone else)",
    )
    p.add_argument("--timeout", type=float, default=30, help="seconds for connecting and each C-STORE")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser(
        "pull",
        help="pull a study from a configured source (Q/R or DICOMweb) into the running node",
        description="Find a study at a source of 'sources:' in node.yaml by accession number or Study "
        "Instance UID, and retrieve each of its series the node has not analysed yet into the RUNNING node, "
        "where it is stored, routed and analysed like a pushed study; results go to the destinations. "
        "A DICOM source with 'retrieve: move' sends the instances to the node's AE title itself (C-MOVE); "
        "with 'retrieve: get' (C-GET) and from a DICOMweb source (WADO-RS) this command receives them "
        "and sends them to the node by C-STORE on this machine. A series already analysed and unchanged "
        "(same instances) is not retrieved again. Prints one line; exit 0 done, 1 failed (unknown source, "
        "no such study, source or node unreachable, instances refused), 2 bad usage.",
    )
    p.add_argument("--source", required=True, help="the source's name in node.yaml (sources:)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--accession", help="Accession Number of the study")
    which.add_argument("--study", metavar="UID", help="Study Instance UID")
    p.add_argument("--series", metavar="UID", help="only this series of the study")
    p.add_argument("--timeout", type=float, default=30, help="seconds for connecting and each C-STORE to the node")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser(
        "hash-password",
        help="print the hash of a password for http_users (HTTP Basic login to the node)",
        description="Read a password (asked twice on a terminal; else one line of stdin, e.g. "
        "printf '%s\\n' \"$PASSWORD\" | ainode hash-password) and print its scrypt hash, for "
        "'http_users: [{name: NAME, password_hash: HASH}]' in node.yaml. The password itself is never stored.",
    )
    p.set_defaults(func=cmd_hash_password)
    p = sub.add_parser(
        "conformance",
        help="print the DICOM Conformance Statement (PS3.2), generated from the code",
        description="Write the node's DICOM Conformance Statement (PS3.2 layout, Markdown): SOP classes and "
        "transfer syntaxes as SCP and SCU, association policies, TLS, created objects with their templates "
        "and codes. Read from the code's own tables with the default settings (not this site's "
        "configuration), so it is the same on every installation of a version; docs/conformance.md is it.",
    )
    p.add_argument("--output", metavar="PATH", help="write to this file (default: standard output)")
    p.set_defaults(func=cmd_conformance)
    p = sub.add_parser(
        "viewer",
        help="serve the OHIF viewer with its DICOMweb data source proxied (viewer: in node.yaml)",
        description="Serve the pinned OHIF v3 build (fetched by 'bash scripts/ohif.sh') on viewer.host:viewer.port "
        "(default 127.0.0.1:8081), reading studies from viewer.dicomweb (default Orthanc's DICOMweb plugin) through "
        "its own /dicom-web, which adds that server's credentials: the browser never sees them and needs no CORS. "
        "The viewer has no login and shows patient data: keep it on loopback or behind the site's login or VPN. "
        "Stops on Ctrl-C or SIGTERM (exit 0); exit 2 with one line when it cannot start.",
    )
    p.add_argument("--host", help="listen on this address instead of viewer.host")
    p.add_argument("--port", type=int, help="listen on this port instead of viewer.port (0: a free port)")
    p.set_defaults(func=cmd_viewer)
    for command in sub.choices.values():  # every command says which configuration it reads
        command.epilog = CONFIG_HELP
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        _setup_logging(settings)
        return int(args.func(settings, args))
    except NodeError as exc:
        print(f"ainode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in a command other than serve (which stops cleanly on SIGINT)
        print("ainode: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        from core.errors import CoreError, UnreadableDicom
        from models.errors import ModelError

        # The edge: the lower packages' errors that no command mapped itself are still one line (a bug's
        # traceback stays a traceback).
        if isinstance(exc, UnreadableDicom):
            message = f"{exc.path}: {exc.reason}"
        elif isinstance(exc, (CoreError, ModelError)):
            message = str(exc)
        elif isinstance(exc, SQLAlchemyError):
            cause = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"database error ({cause}): check database_url and the data directory in the configuration"
        elif isinstance(exc, OSError):
            where = f": {exc.filename}" if exc.filename else ""
            message = f"{exc.strerror or exc}{where}"
        else:
            raise
        print(f"ainode: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
