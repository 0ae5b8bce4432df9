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

from datetime import datetime

URGENT, PRIORITY, ROUTINE = 0, 1, 2
NAMES = {URGENT: "urgent", PRIORITY: "priority", ROUTINE: "routine"}

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
