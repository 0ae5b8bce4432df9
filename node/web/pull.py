"""``POST /api/pull``: pull a study or series from a configured source, as ``ainode pull`` does.

The body is JSON::

    {"source": "pacs", "accession": "A123"}
    {"source": "pacs", "study": "1.2.3", "series": "1.2.3.4"}

``source`` and exactly one of ``accession`` and ``study`` are required;
``series`` narrows the pull to one series. The node's puller
(:class:`node.pull.Puller`) retrieves the instances into the same spool and
routing as pushed ones; a series already analysed and unchanged is skipped.

Answers (JSON): ``200`` with the result (``source``, ``studies``,
``series_requested``, ``series_skipped``, ``instances_received``, ``failed``,
``message``); ``400`` for bad arguments, ``404`` for a source that is not
configured or a study the source does not have, ``502`` when the source failed
or could not be reached; each error as ``{"error": "<one line>"}``. The
request waits for the pull to finish (a C-MOVE of a CT takes minutes: give
the client a long timeout).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

__all__ = ["MAX_BODY", "PullArguments", "PullRequestError", "Puller", "parse_pull_request", "result_json"]

#: Bytes of JSON a pull request may have (it names a source and two UIDs).
MAX_BODY = 4096
_KEYS = {"source", "accession", "study", "series"}


class Puller(Protocol):
    """What the endpoint needs of :class:`node.pull.Puller`."""

    def pull(
        self,
        source: str,
        *,
        accession: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> Any: ...


class PullRequestError(Exception):
    """A request refused before any pull: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class PullArguments:
    source: str
    accession: str | None
    study_uid: str | None
    series_uid: str | None


def _text(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PullRequestError(400, f"{key!r} must be a non-empty string")
    if len(value) > limit:
        raise PullRequestError(400, f"{key!r} is longer than {limit} characters")
    return value.strip()


def parse_pull_request(raw: bytes) -> PullArguments:
    """The arguments of a pull request body; :class:`PullRequestError` (400) when it is not a usable object.

    Which combinations are valid and whether the source exists is the puller's to say
    (:class:`node.pull.PullArgumentError`, :class:`node.pull.UnknownSource`).
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PullRequestError(400, 'body is not JSON: send {"source": ..., "accession": ...}') from None
    if not isinstance(body, dict):
        raise PullRequestError(400, 'body must be a JSON object: {"source": ..., "accession": ...}')
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise PullRequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))}: use {', '.join(sorted(_KEYS))}")
    source = _text(body, "source", 64)
    if source is None:
        raise PullRequestError(400, "'source' is required (the name of a configured source)")
    return PullArguments(source, _text(body, "accession", 64), _text(body, "study", 64), _text(body, "series", 64))


def result_json(result: Any) -> dict[str, Any]:
    """The fields of a :class:`node.pull.PullResult` as JSON."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return {"message": str(result)}
