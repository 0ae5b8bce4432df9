"""A daemon thread that repeats one pass of work, sooner when notified; one log line per database outage."""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, locked), not a refused statement."""
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    )


def short_reason(exc: BaseException) -> str:
    """The first line of the driver's message: SQLAlchemy's own text adds the statement, its parameters and a link."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0][:300] if lines else type(cause).__name__


class OutageLog:
    """Says once that the database became unreachable and once that it is back, whatever happens in between.

    ``paused`` names the work that waits meanwhile ("delivering results"); ``meanwhile`` what happens to it
    (default: it is retried with back-off). Call :meth:`failed` on each failure (the first of an outage is
    one WARNING line, the others DEBUG lines with their traceback) and :meth:`recovered` on each success
    (one INFO line after an outage, nothing otherwise). Safe to share between threads.
    """

    def __init__(
        self,
        log: logging.Logger,
        paused: str,
        meanwhile: str = "retrying with back-off",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.paused = paused
        self.meanwhile = meanwhile
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = self.clock()
        if first:
            self.log.warning("database unreachable (%s): %s paused; %s", short_reason(exc), self.paused, self.meanwhile)
        self.log.debug("database still unreachable: %s paused", self.paused, exc_info=exc)

    def recovered(self) -> None:
        with self._lock:
            if self.since is None:
                return
            seconds, failures = self.clock() - self.since, self.failures
            self.since, self.failures = None, 0
        self.log.info(
            "database reachable again after %.0f s: %s resumed (%d failed attempt(s) meanwhile)",
            seconds,
            self.paused,
            failures,
        )


class BackgroundLoop(abc.ABC):
    """Runs :meth:`run_once` in a thread until stopped.

    ``run_once`` returns how many seconds may pass before the next pass;
    :meth:`notify` cuts the wait short. A notification that arrives during a
    pass is kept (the event is cleared before the next pass, not after it), so
    none is lost. A pass that raises is retried after ``retry_seconds``,
    doubling while it keeps failing up to ``max_retry_seconds``: a bug or a
    database outage must not end the loop. An unreachable database is one
    warning line when it starts and one when it ends (:class:`OutageLog`,
    ``paused`` says what waits); any other failure is logged with its
    traceback once, its repeats as one line each.
    """

    retry_seconds = 1.0
    max_retry_seconds = 10.0
    #: What waits while the database is unreachable, for the outage lines.
    paused = "this loop's work"

    def __init__(self, name: str, log: logging.Logger) -> None:
        self.name = name
        self.log = log
        self.outage = OutageLog(log, self.paused)
        self._loop_retry = self.retry_seconds
        self._loop_failing: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def run_once(self) -> float:
        """Do one pass; return the seconds until the next pass is useful."""

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def pass_once(self) -> float:
        """One pass as the loop runs it: failures logged (see the class), the seconds to wait returned."""
        failures = self.outage.failures
        try:
            wait = self.run_once()
        except Exception as exc:  # noqa: BLE001 (the loop outlives anything; the next pass tries again)
            return self._pass_failed(exc)
        if self.outage.failures == failures:  # not a pass that met the outage and said so itself
            self.outage.recovered()
        if self._loop_failing is not None:
            self.log.info("%s passes again", self.name)
        self._loop_failing = None
        self._loop_retry = self.retry_seconds
        return wait

    def _pass_failed(self, exc: Exception) -> float:
        if database_unreachable(exc):
            self.outage.failed(exc)
        else:
            what = f"{type(exc).__name__}: {short_reason(exc)}"
            if self._loop_failing is None:
                self.log.exception("%s pass failed (%s); retrying", self.name, what)
            elif what != self._loop_failing:
                self.log.error("%s pass failed again (%s); retrying", self.name, what)
            else:
                self.log.debug("%s pass failed again (%s)", self.name, what, exc_info=exc)
            self._loop_failing = what
        wait = self._loop_retry
        self._loop_retry = min(self._loop_retry * 2, max(self.max_retry_seconds, self.retry_seconds))
        return wait

    def _loop(self) -> None:
        while not self._stopping.is_set():
            wait = self.pass_once()
            self._wake.wait(wait)
            self._wake.clear()
