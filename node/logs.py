"""Structured logs: every line about a job or an instance names the job and the study.

The node's threads set what they are working on with :func:`log_context`
(``job``, ``study``, ``series``); :class:`ContextFilter` copies it onto each
log record, so a line logged anywhere below -- a pipeline, a model, the
dispatcher -- carries it without passing it around. ``contextvars`` keep it
per thread, so concurrent associations and workers never mix their contexts.

Two formats (``log_format`` in node.yaml):

* ``text``: ``2026-11-22 10:00:00,123 INFO    ainode.executor [worker-0] job 7 done [job=7 study=1.2.3]``
* ``json``: one object per line with the keys ``time, level, logger, message,
  job, study, series`` (``null`` when not known), plus ``thread`` and, for an
  exception, ``exception``.

Lines name UIDs, AE titles and addresses only, never patient names, IDs or
birth dates (see README, "Data and privacy"). The node's own messages never
include them; but a library's message or a traceback may quote a value (e.g.
pydicom's "Unable to convert '1923-04-17' to 'DA' object"). So a job binds
the patient values of its series (:func:`patient_values`) and every line
logged while it runs has them replaced by ``<patient data>``
(:func:`redact`); Python warnings are routed through logging to get the
same treatment.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind_log_context",
    "log_context",
    "patient_values",
    "read_patient_values",
    "redact",
    "setup_logging",
]

_JOB: ContextVar[int | None] = ContextVar("ainode_log_job", default=None)
_STUDY: ContextVar[str | None] = ContextVar("ainode_log_study", default=None)
_SERIES: ContextVar[str | None] = ContextVar("ainode_log_series", default=None)
_REDACT: ContextVar[tuple[str, ...]] = ContextVar("ainode_log_redact", default=())

#: Patient Module attributes (PS3.3 C.7.1.1) whose values must never reach a log.
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
)
REDACTED = "<patient data>"

#: Libraries whose INFO lines (association details, attribute copying) are not for administrators
#: and could name patient attributes; they log WARNING and above only.
QUIET_LIBRARIES = ("pynetdicom", "highdicom", "pydicom")


@contextmanager
def log_context(
    job: int | None = None, study: str | None = None, series: str | None = None, redact: Sequence[str] = ()
) -> Iterator[None]:
    """Within the block, log records of this thread carry ``job``, ``study`` and ``series``.

    Values not given keep what an enclosing block set; whatever is set inside
    the block (also by :func:`bind_log_context`) is undone when it ends.
    ``redact``: patient values to replace in every line logged meanwhile.
    """
    saved = (_JOB.get(), _STUDY.get(), _SERIES.get(), _REDACT.get())
    bind_log_context(job=job, study=study, series=series, redact=redact)
    try:
        yield
    finally:
        _JOB.set(saved[0])
        _STUDY.set(saved[1])
        _SERIES.set(saved[2])
        _REDACT.set(saved[3])


def bind_log_context(
    job: int | None = None, study: str | None = None, series: str | None = None, redact: Sequence[str] = ()
) -> None:
    """Set what this thread works on until the enclosing :func:`log_context` ends."""
    if job is not None:
        _JOB.set(job)
    if study is not None:
        _STUDY.set(study)
    if series is not None:
        _SERIES.set(series)
    if redact:
        _REDACT.set(tuple(sorted(set(_REDACT.get()) | set(redact), key=len, reverse=True)))


def patient_values(ds: Any) -> tuple[str, ...]:
    """The patient's identifying values in a data set, as they could appear in text.

    Whole values and their components of 3 characters or more (a name's
    family and given names), and a birth date also as ``YYYY-MM-DD``.
    """
    found: set[str] = set()
    for keyword in PATIENT_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # an unreadable value is still not for the log; nothing to match though
            continue
        if value is None or value == "":
            continue
        items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item).strip()
            parts = [text, *re.split(r"[\\^=,\s]+", text)]
            if keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                parts.append(f"{text[:4]}-{text[4:6]}-{text[6:]}")
            found.update(p for p in parts if len(p) >= 3)
    return tuple(sorted(found, key=len, reverse=True))


def read_patient_values(path: Path) -> tuple[str, ...]:
    """:func:`patient_values` of a DICOM file's header (nothing when it cannot be read)."""
    from core.dicomfile import read_dataset  # pydicom only when a job starts, not for every command
    from core.errors import UnreadableDicom

    try:
        ds = read_dataset(path, header_only=True, tags=PATIENT_KEYWORDS)
    except UnreadableDicom:  # the job will report the unreadable file itself
        return ()
    return patient_values(ds)


def redact(text: str, values: Sequence[str] | None = None) -> str:
    """``text`` with each patient value (default: those bound to this thread) replaced by ``<patient data>``."""
    for value in _REDACT.get() if values is None else values:
        text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
    return text


class ContextFilter(logging.Filter):
    """Adds ``job``, ``study`` and ``series`` to every record (``None`` when unknown); redacts patient values."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = _REDACT.get()
        if values:
            record.msg, record.args = redact(record.getMessage(), values), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, values)
        # A value passed explicitly with ``extra=`` wins over the thread's context.
        if getattr(record, "job", None) is None:
            record.job = _JOB.get()
        if getattr(record, "study", None) is None:
            record.study = _STUDY.get()
        if getattr(record, "series", None) is None:
            record.series = _SERIES.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with ``[job=… study=… series=…]`` appended when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        parts = [
            f"{key}={getattr(record, key)}"
            for key in ("job", "study", "series")
            if getattr(record, key, None) is not None
        ]
        if not parts:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the tagged line
        return f"{first} [{' '.join(parts)}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time, level, logger, message, job, study, series``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job": getattr(record, "job", None),
            "study": getattr(record, "study", None),
            "series": getattr(record, "series", None),
            "thread": record.threadName,
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Configure the root logger once for a command: one stderr handler, context on every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # Python warnings (pydicom's quote values) go through the handler: redacted, and JSON stays one object a line.
    logging.captureWarnings(True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, getattr(logging, level)))
