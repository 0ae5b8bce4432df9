"""``ainode analyze``: run the pipelines on files and folders, without the network or database.

Files are found recursively, grouped by series from their headers, routed as
the node would route them (or forced with ``--pipeline``), analysed, and the
result objects written to the output folder as ``<SOPInstanceUID>.dcm``. A
file that cannot be read or analysed fails alone; the summary table says why.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from core.dicomfile import encode_part10
from core.table import format_table
from node.errors import ConfigError, InputError, NodeError
from node.pipelines import Pipeline
from node.pipelines.registry import build_pipeline
from node.router import is_own_or_result_object, load_routing, read_header, route
from node.settings import Settings
from node.spool import check_uid, write_durable


@dataclass
class SeriesWork:
    study_uid: str
    series_uid: str
    pipeline: str | None
    reason: str
    paths: list[Path] = field(default_factory=list)


class Progress:
    """A one-line text progress bar on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {time.monotonic() - self.started:5.1f}s {label[:40]}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def find_files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return found


def analyze_paths(
    settings: Settings, paths: Sequence[Path], out: Path, pipeline: str | None = None, stream: TextIO = sys.stdout
) -> int:
    """Analyse ``paths``; returns 0 when every file was analysed, 1 when some failed."""
    from node.service import plan_models

    files = find_files(paths)
    routing = load_routing(settings.routing_file)
    rows: list[tuple[str, str, str, str]] = []
    work: dict[str, SeriesWork] = {}
    for path in files:
        try:
            header = read_header(path)
            study = check_uid(header.get("StudyInstanceUID"), "StudyInstanceUID")
            series = check_uid(header.get("SeriesInstanceUID"), "SeriesInstanceUID")
            check_uid(header.get("SOPInstanceUID"), "SOPInstanceUID")  # the result references it, as the node would
        except (InputError, Exception) as exc:  # any unreadable file fails alone
            rows.append((str(path), "-", "failed", f"not a readable DICOM file: {_short(exc)}"))
            continue
        if series not in work:
            own = is_own_or_result_object(header)
            if own:
                choice, reason = None, own
            elif pipeline:
                choice, reason = pipeline, "forced with --pipeline"
            else:
                decision = route(header, routing)
                choice, reason = decision.pipeline, decision.reason
            work[series] = SeriesWork(study, series, choice, reason)
        work[series].paths.append(path)
    plan = plan_models(settings)
    built: dict[str, Pipeline] = {}
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(work))
    failed = any(r[2] == "failed" for r in rows)
    for item in work.values():
        progress.step(item.series_uid)
        label = f"{len(item.paths)} file(s) of series {item.series_uid}"
        if item.pipeline is None:
            rows.append((label, "-", "skipped", item.reason))
            continue
        if item.pipeline not in plan.enabled:
            rows.append((label, item.pipeline, "failed", plan.disabled.get(item.pipeline, "unknown pipeline")))
            failed = True
            continue
        try:
            if item.pipeline not in built:
                built[item.pipeline] = build_pipeline(item.pipeline, settings, plan.registry)
            output = built[item.pipeline].analyse(item.study_uid, item.series_uid, item.paths)
        except NodeError as exc:
            rows.append((label, item.pipeline, "failed", str(exc)))
            failed = True
            continue
        names = []
        for ds in output.objects:
            target = out / f"{ds.SOPInstanceUID}.dcm"
            write_durable(target, encode_part10(ds), out)
            names.append(f"{ds.Modality} {target.name}")
        detail = output.summary + (f" (problems: {'; '.join(output.warnings)})" if output.warnings else "")
        rows.append((label, item.pipeline, "done", f"{detail} -> {', '.join(names)}"))
        failed = failed or bool(output.warnings)
    print(format_table(["input", "pipeline", "outcome", "details"], rows), file=stream)
    done = sum(1 for r in rows if r[2] == "done")
    print(
        f"{done} series analysed, {sum(1 for r in rows if r[2] == 'failed')} failed, "
        f"{sum(1 for r in rows if r[2] == 'skipped')} skipped; results in {out}",
        file=stream,
    )
    return 1 if failed else 0


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
