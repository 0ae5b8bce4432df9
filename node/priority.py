"""How urgent a job is, and in which order jobs are taken.

A job's priority is a small integer, lower first, the same scale as a result's delivery
priority (``Result.priority``): :data:`URGENT` 0, :data:`PRIORITY` 1, :data:`ROUTINE` 2
(``None`` counts as routine). A job that has waited longer than ``priorities.promote_after``
is *promoted*: it goes before every job that is not, oldest first, so routine work always
finishes however much urgent work arrives.

The local pool orders its claims by these rules; the Celery executor maps them to
RabbitMQ message priorities (:func:`broker_priority`, queues declared with
``x-max-priority`` :data:`MAX_BROKER_PRIORITY`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from node.db import Job, JobState, Result, Series, rowcount

URGENT, PRIORITY, ROUTINE = 0, 1, 2
NAMES = {URGENT: "urgent", PRIORITY: "priority", ROUTINE: "routine"}
#: A level by its name, as a routing rule's ``priority:`` gives it.
LEVELS = {name: level for level, name in NAMES.items()}

#: The reason of a job raised (or created) urgent because a result of its study was triaged urgent.
TRIAGED_URGENT = "study triaged urgent"
#: Longest ``Job.priority_reason`` (its column's size).
MAX_REASON = 128

#: What :func:`job_priority` reads of a series' first instance, besides the rules' attributes: the
#: receiver records these at receive (``Instance.header``, :func:`node.router.routing_tags`).
PRIORITY_TAGS = frozenset(
    int(Tag(keyword))
    for keyword in ("RequestedProcedurePriority", "RequestAttributesSequence", "CurrentPatientLocation")
)

#: ``x-max-priority`` of every job queue; higher is taken first by RabbitMQ.
MAX_BROKER_PRIORITY = 9
#: The broker priority of a promoted job: above every other.
PROMOTED_BROKER_PRIORITY = MAX_BROKER_PRIORITY
_BROKER = {URGENT: 8, PRIORITY: 5, ROUTINE: 1}


def is_promoted(created_at: datetime, now: datetime, promote_after: float) -> bool:
    """True when a job created at ``created_at`` has waited past ``promote_after`` seconds at ``now``."""
    return (now - created_at).total_seconds() >= promote_after


def broker_priority(priority: int | None, promoted: bool) -> int:
    """The RabbitMQ message priority (0-9, higher first) of a job of ``priority``."""
    if promoted:
        return PROMOTED_BROKER_PRIORITY
    return _BROKER.get(ROUTINE if priority is None else priority, _BROKER[ROUTINE])


def claim_order(now: datetime, promote_after: float | None) -> list[ColumnElement[Any]]:
    """``ORDER BY`` of queued jobs for the local pool: promoted first (oldest first), then by priority, then id.

    A job is promoted when it was created ``promote_after`` seconds or more before ``now``
    (:func:`is_promoted`); ``None``: no promotion. Ids grow with creation, so "oldest" is the lowest id.
    One expression for SQLite and PostgreSQL.
    """
    level = func.coalesce(Job.priority, ROUTINE)
    if promote_after is None:
        return [level, Job.id.asc()]
    promoted = Job.created_at <= now - timedelta(seconds=promote_after)
    return [case((promoted, 0), else_=1), case((promoted, 0), else_=level), Job.id.asc()]


def triaged_urgent(session: Session, study_uid: str) -> bool:
    """Whether a current result of the study was triaged urgent (its SR's ``images[].triage``).

    Only results with delivery priority urgent are looked at (``Result.priority`` 0: urgent triage, or an
    urgent job); their SR content says which. Reads rows only, never a file.
    """
    # By the study's series (both indexed): results.study_uid has no index, and this runs for every new job.
    series = select(Series.series_uid).where(Series.study_uid == study_uid)
    payloads = session.scalars(
        select(Result.payload).where(
            Result.series_uid.in_(series),
            Result.priority == URGENT,
            Result.kind == "SR",
            Result.superseded_by.is_(None),
        )
    )
    return any(
        isinstance(image, dict) and image.get("triage") == NAMES[URGENT]
        for payload in payloads
        if isinstance(payload, dict)
        for image in payload.get("images") or ()
    )


def raise_study(session: Session, study_uid: str) -> int:
    """Make every queued job of the study urgent (:data:`TRIAGED_URGENT`); returns how many were raised.

    With ``executor: celery`` the publisher sees the higher priority and publishes the job again.
    """
    raised = session.execute(
        update(Job)
        .where(
            Job.study_uid == study_uid,
            Job.state == JobState.QUEUED,
            or_(Job.priority.is_(None), Job.priority > URGENT),
        )
        .values(priority=URGENT, priority_reason=TRIAGED_URGENT)
    )
    return rowcount(raised)


def level_name(priority: int | None) -> str:
    """``urgent``, ``priority`` or ``routine`` (``None`` counts as routine)."""
    return NAMES.get(ROUTINE if priority is None else priority, NAMES[ROUTINE])


@dataclass(frozen=True)
class JobPriority:
    """A job's priority and why: the most urgent of the reasons that applied."""

    level: int
    reason: str | None


class PriorityPolicy:
    """Computes a new job's priority from configuration (``priorities:`` in node.yaml).

    Parameters
    ----------
    urgent_procedure_priorities, high_procedure_priorities : sequence of str
        Requested Procedure Priority (0040,1003) values (PS3.3 C.4.11: STAT, HIGH, ROUTINE, MEDIUM,
        LOW) that make a job urgent, and priority; compared without case or padding.
    urgent_locations : sequence of str
        Regular expressions (``re.search``) on Current Patient Location (0038,0300) that make a job urgent.
    """

    def __init__(
        self,
        urgent_procedure_priorities: Sequence[str] = ("STAT",),
        high_procedure_priorities: Sequence[str] = ("HIGH",),
        urgent_locations: Sequence[str] = (),
    ) -> None:
        self.urgent_values = frozenset(v.strip().upper() for v in urgent_procedure_priorities)
        self.high_values = frozenset(v.strip().upper() for v in high_procedure_priorities)
        self.locations = [re.compile(pattern) for pattern in urgent_locations]

    @classmethod
    def from_settings(cls, settings: Any) -> PriorityPolicy:
        """From :class:`node.settings.PrioritySettings`."""
        return cls(settings.urgent_procedure_priorities, settings.high_procedure_priorities, settings.urgent_locations)

    def job_priority(
        self,
        header: Dataset,
        *,
        rule: str | None = None,
        rule_priority: int | None = None,
        triaged_urgent: bool = False,
    ) -> JobPriority:
        """The priority of a job for the series whose first instance's header is ``header``.

        The most urgent of: the routing rule's ``priority`` (reason ``rule NAME``); the Requested
        Procedure Priority, top level or in a Request Attributes Sequence (0040,0275) item
        (``RequestedProcedurePriority STAT``); the Current Patient Location (``location ED``); an
        urgent triage of the study's earlier results (:data:`TRIAGED_URGENT`). On a tie the first
        of these names the reason. Nothing applies: routine, no reason.
        """
        found: list[JobPriority] = []
        if rule_priority is not None:
            found.append(JobPriority(rule_priority, f"rule {rule}" if rule else "routing rule"))
        for value in _procedure_priorities(header):
            if value in self.urgent_values:
                found.append(JobPriority(URGENT, f"RequestedProcedurePriority {value}"))
            elif value in self.high_values:
                found.append(JobPriority(PRIORITY, f"RequestedProcedurePriority {value}"))
        location = _text(_value(header, "CurrentPatientLocation"))
        if location and any(pattern.search(location) for pattern in self.locations):
            found.append(JobPriority(URGENT, f"location {location}"))
        if triaged_urgent:
            found.append(JobPriority(URGENT, TRIAGED_URGENT))
        if not found:
            return JobPriority(ROUTINE, None)
        best = min(found, key=lambda p: p.level)  # min keeps the first of equals
        reason = best.reason[:MAX_REASON] if best.reason else None
        return JobPriority(best.level, reason)


def _procedure_priorities(header: Dataset) -> Iterable[str]:
    """Requested Procedure Priority values of the top level and of Request Attributes Sequence items."""
    values = [_text(_value(header, "RequestedProcedurePriority"))]
    items = _value(header, "RequestAttributesSequence") or []
    for item in items if isinstance(items, Iterable) else []:
        if isinstance(item, Dataset):
            values.append(_text(_value(item, "RequestedProcedurePriority")))
    return [value.upper() for value in values if value]


def _value(ds: Dataset, keyword: str) -> Any:
    """An attribute's value, ``None`` when absent or undecodable (a bad value must not stop routing)."""
    try:
        return ds.get(keyword, None)
    except Exception:
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return str(value).strip(" \x00")
