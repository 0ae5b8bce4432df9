"""Watch an Orthanc's ``/changes`` feed and pull each new stable series: an alternative to Lua forwarding.

Orthanc logs every change of its store in a numbered feed (``GET /changes?since=N``). With
``orthanc_watch`` configured, the node polls it every ``poll_seconds``; for each ``StableSeries``
change (or ``StableStudy``, by ``event``) it pulls that series (study) through the configured
source (:class:`node.pull.Puller`: Orthanc's DICOMweb, or its Q/R SCP by C-MOVE or C-GET), so it is
stored, routed and analysed like a pushed series, and a series already analysed and unchanged is
not retrieved again. The node's own results arriving in Orthanc are changes too: the puller does not
retrieve result objects (SR, SEG, PR, KO, Manufacturer ainode), so they are never analysed.

The number of the last change handled is kept in ``<data_dir>/orthanc-watch.json`` (with Orthanc's
URL): a restarted node resumes after it, and handles each change once. Without that file (first
start, or a new URL) the watch starts at the feed's current end: what Orthanc held before is not
pulled (``ainode pull`` fetches such a study by hand). A change whose pull fails because the source
is unreachable is tried again at the next poll, and the feed does not advance past it; one whose
pull had failed instances (refused by the node, or not sent by the source) is tried again up to
:data:`RETRIES_PER_CHANGE` times, then logged as an error and passed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import requests

from node import tls
from node.destinations import _connection_reason, _without_userinfo
from node.errors import ConfigError
from node.pull import NothingFound, Puller, PullError, SourceUnavailable
from node.settings import OrthancWatchSettings
from node.webclient import http_session

__all__ = ["RETRIES_PER_CHANGE", "STATE_FILE", "OrthancWatcher"]

LOGGER = logging.getLogger("ainode.watcher")

#: Where the last change handled is kept, in the data directory.
STATE_FILE = "orthanc-watch.json"
_PAGE = 100
#: Pulls of one change that may fail some instances before the watch goes on past it.
RETRIES_PER_CHANGE = 5


class _Retry(Exception):
    """Stop at this change and try it again at the next poll."""


class OrthancWatcher:
    """A thread polling Orthanc's ``/changes`` and pulling each stable series through ``puller``.

    Parameters
    ----------
    settings : OrthancWatchSettings
        Orthanc's URL, authentication, the source to pull through, the poll interval and event.
    puller : Puller
        The node's puller.
    data_dir : Path
        Where :data:`STATE_FILE` is kept.
    """

    def __init__(self, settings: OrthancWatchSettings, puller: Puller, data_dir: Path) -> None:
        self.settings = settings
        self.puller = puller
        self.url = settings.url.rstrip("/")
        self.where = f"Orthanc {_without_userinfo(self.url)}"
        self.state_path = data_dir / STATE_FILE
        secret = settings.secret()
        try:
            self.session = http_session(
                "orthanc_watch",
                auth=settings.auth,
                username=settings.username,
                password=secret if settings.auth == "basic" else None,
                token=secret if settings.auth == "bearer" else None,
                verify_tls=tls.https_verify("orthanc_watch", settings, key="orthanc_watch"),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None  # the last failure logged, so a long outage is one warning
        self._tries: dict[int, int] = {}  # change number -> pulls of it that had failed instances
        self.last: int | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orthanc-watch", daemon=True)
        self._thread.start()
        LOGGER.info(
            "watching %s for %s changes every %.3g s (pulled through source %s)",
            self.where,
            self.settings.event,
            self.settings.poll_seconds,
            self.settings.source,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.session.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.poll()
                if self._failing is not None:
                    LOGGER.info("%s: watching again", self.where)
                    self._failing = None
            except (_Retry, requests.RequestException, ValueError, KeyError, TypeError, OSError) as exc:
                reason = _connection_reason(exc) if isinstance(exc, requests.RequestException) else str(exc)
                if reason != self._failing:
                    LOGGER.warning("%s: %s; trying again every %.3g s", self.where, reason, self.settings.poll_seconds)
                    self._failing = reason
                more = False
            except Exception:  # never let the thread die silently: the node keeps serving
                LOGGER.exception("%s: unexpected error in the change watch", self.where)
                more = False
            if not more:
                self._stop.wait(self.settings.poll_seconds)

    # -- the feed ------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}/{path}", params=params, timeout=self.settings.timeout)
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise _Retry("HTTP 401 (authentication failed: check the username/password or token)")
        response.raise_for_status()
        return response.json()

    def _load(self) -> int:
        """The last change handled: from the state file, else the feed's current end (recorded at once)."""
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("url") == self.url:
                return int(state["last"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOGGER.warning("%s: %s unreadable (%s): starting at the feed's end", self.where, self.state_path, exc)
        answer = self._get("changes", last="")
        last = int((answer or {}).get("Last", 0))
        self._save(last)
        LOGGER.info("%s: starting at change %d (changes before it are not pulled)", self.where, last)
        return last

    def _save(self, last: int) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"url": self.url, "last": last}))
        os.replace(temporary, self.state_path)
        self.last = last

    def poll(self) -> bool:
        """Handle the next page of changes; True when more are waiting."""
        last = self._load() if self.last is None else self.last
        answer = self._get("changes", since=last, limit=_PAGE)
        if answer is None:
            raise _Retry("GET /changes answered 404: is this Orthanc's REST root?")
        for change in answer.get("Changes", []):
            if self._stop.is_set():
                return False
            if change.get("ChangeType") == self.settings.event:
                self._handle(change)
            last = int(change["Seq"])
            self._save(last)
        if not answer.get("Changes") and int(answer.get("Last", last)) > last:
            self._save(int(answer["Last"]))
        return not answer.get("Done", True)

    def _handle(self, change: dict[str, Any]) -> None:
        resource = str(change.get("ID", ""))
        if change.get("ChangeType") == "StableStudy":
            study = self._get(f"studies/{resource}")
            series_uid = None
        else:
            series = self._get(f"series/{resource}")
            study = self._get(f"studies/{series['ParentStudy']}") if series else None
            series_uid = series["MainDicomTags"].get("SeriesInstanceUID") if series else None
        if study is None:  # deleted since: nothing to pull
            return
        study_uid = study["MainDicomTags"].get("StudyInstanceUID")
        try:
            result = self.puller.pull(self.settings.source, study_uid=study_uid, series_uid=series_uid)
        except SourceUnavailable as exc:
            raise _Retry(str(exc)) from exc
        except NothingFound as exc:  # gone from the source since the change
            LOGGER.info("%s: change %s: %s", self.where, change.get("Seq"), exc)
            return
        except PullError as exc:
            LOGGER.warning("%s: change %s not pulled: %s", self.where, change.get("Seq"), exc)
            return
        seq = int(change.get("Seq", 0))
        if result.failed:
            # Instances the node refused (e.g. its disk full) or the source failed to send: try the change again,
            # a few times, so a passing problem loses nothing and one bad object does not stop the feed.
            tries = self._tries.get(seq, 0) + 1
            if tries < RETRIES_PER_CHANGE:
                self._tries = {seq: tries}
                raise _Retry(f"change {seq}: {result.message} (try {tries} of {RETRIES_PER_CHANGE})")
            LOGGER.error("%s: change %s given up after %d tries: %s", self.where, seq, tries, result.message)
        self._tries = {}
        if result.series_requested:
            LOGGER.info("%s: change %s: %s", self.where, seq, result.message)
