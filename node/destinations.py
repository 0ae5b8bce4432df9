"""Result senders: C-STORE (PS3.4 Annex B) and STOW-RS (PS3.18 10.5) destinations.

A destination sends a batch of Part 10 files and says what happened in a
:class:`DeliveryAttempt`; it never raises for a refusal or an unreachable peer
and keeps no state (retries, back-off and dead letters belong to
``node.dispatcher``).

How outcomes are classified (``permanent`` means retrying cannot help)::

    C-STORE                                 STOW-RS
    association rejected-permanent  perm.   HTTP 4xx (not 408, 429)       perm.
    rejected-transient, refused,    trans.  HTTP 408, 429, 5xx            trans.
      timeout, aborted                      connection error, timeout     trans.
    status 0x0000, 0xB0xx           ok      instance in ReferencedSOP-    ok
                                              Sequence (warnings too)
    failed instances: permanent only when every failure status is one that
    the same data cannot pass (0xA9xx, 0xCxxx, 0x0122, 0x0124)

``statuses`` maps each SOP Instance UID the peer answered for to its status
(for STOW-RS: 0, the Warning Reason (0008,1196) or the Failure Reason
(0008,1197)), so the dispatcher can finish the instances that did arrive.
An instance the SCU never sent (no accepted presentation context) has a local
status, 0x0122, and a ``notes`` entry saying why in the peer's terms: "SOP
class not supported" only when the peer refused the SOP class itself, "no
acceptable transfer syntax" when it refused the file's syntax (e.g. a peer
taking JPEG lossless only), so the message never blames the SOP class for a
transfer syntax.
Passwords and tokens are never put in a message, a log line or a ``repr``.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests

from core import status as dimse_status
from core.dicomfile import read_dataset
from dimse.scu import AssociationFailed, store_files
from node.tls import handshake_error
from node.webclient import dicomweb_client

__all__ = ["DeliveryAttempt", "DicomDestination", "DicomWebDestination", "is_permanent_status"]

LOGGER = logging.getLogger("ainode.destinations")


class _NoTraceback(logging.Filter):
    """Keep a library's one-line message, drop its traceback: users must not see tracebacks in the node log.

    pynetdicom logs a connection the peer resets or closes at ERROR with the
    traceback of the socket error; the destination reports the failed
    delivery itself, in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


for _name in ("pynetdicom.dul", "pynetdicom.acse", "pynetdicom.association", "pynetdicom.transport"):
    logging.getLogger(_name).addFilter(_NoTraceback())

# HTTP statuses that a later retry may turn into a success (RFC 9110 15.5.9, RFC 6585 4).
_RETRYABLE_HTTP = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryAttempt:
    """What one send of a batch achieved.

    Attributes
    ----------
    ok : bool
        Every file in the batch was stored (success or warning).
    permanent : bool
        The failure will not go away by retrying (meaningless when ``ok``).
    message : str
        One line for the delivery's ``last_error`` and the log; no secrets.
    statuses : dict of str to int
        SOP Instance UID to the DIMSE status the peer gave it.
    notes : dict of str to str
        SOP Instance UID to why it was not sent, for instances whose status is
        a local one (see :class:`dimse.StoreOutcome`); shown instead of the status.
    """

    ok: bool
    permanent: bool
    message: str
    statuses: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def is_permanent_status(status: int) -> bool:
    """True for a store failure the same data can never pass (PS3.4 B.2.3, PS3.7 C).

    Error 0xA9xx (data set does not match SOP class), 0xCxxx (cannot
    understand), refused 0x0122 (SOP class not supported) and 0x0124 (not
    authorized). Out of resources (0xA7xx) and processing failure (0x0110)
    may pass later.
    """
    return 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status in (0x0122, 0x0124)


def _summarise(
    where: str, total: int, statuses: dict[str, int], unreadable: int = 0, notes: dict[str, str] | None = None
) -> DeliveryAttempt:
    """Build the attempt from per-instance statuses (``total`` files were in the batch).

    ``notes``: why an instance was not sent, shown instead of its (local) status.
    """
    notes = notes or {}
    failed = {uid: code for uid, code in statuses.items() if not dimse_status.is_store_success(code)}
    stored = len(statuses) - len(failed)
    missing = total - unreadable - len(statuses)  # sent but not answered for
    if not failed and not unreadable and missing <= 0:
        warned = sum(1 for code in statuses.values() if code != dimse_status.SUCCESS)
        note = f" ({warned} with a warning)" if warned else ""
        return DeliveryAttempt(True, False, f"{where}: stored {stored} of {total}{note}", statuses)
    problems = [f"{uid}: {notes.get(uid) or dimse_status.describe(code)}" for uid, code in list(failed.items())[:3]]
    if len(failed) > 3:
        problems.append(f"and {len(failed) - 3} more")
    if unreadable:
        problems.append(f"{unreadable} file(s) unreadable")
    if missing > 0:
        problems.append(f"{missing} instance(s) not acknowledged")
    permanent = missing <= 0 and all(is_permanent_status(code) for code in failed.values())
    message = f"{where}: stored {stored} of {total}; failed: " + "; ".join(problems)
    return DeliveryAttempt(False, permanent, message, statuses, {uid: notes[uid] for uid in failed if uid in notes})


class DicomDestination:
    """A Storage SCP (PACS, Orthanc) reached by C-STORE through :mod:`dimse.scu`.

    Parameters
    ----------
    name : str
        The destination's name in ``node.yaml`` (shown in messages).
    ae_title, host, port : str, str, int
        The peer's Called AE Title and address.
    calling_ae : str
        The node's own AE title.
    timeout : float, optional
        Seconds for connecting, negotiating and each C-STORE response.
    ssl_context : ssl.SSLContext, optional
        Client TLS (PS3.15 B.1), when the peer requires it.
    """

    def __init__(
        self,
        name: str,
        *,
        ae_title: str,
        host: str,
        port: int,
        calling_ae: str,
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        tls = ", tls" if self.ssl_context is not None else ""
        return f"DicomDestination({self.name!r}, {self.ae_title}@{self.host}:{self.port}{tls})"

    def send(self, paths: Sequence[Path]) -> DeliveryAttempt:
        """Send the files over one association (or several, see :func:`dimse.scu.store_files`)."""
        tls = " over TLS" if self.ssl_context is not None else ""
        where = f"{self.name} ({self.ae_title}@{self.host}:{self.port}{tls})"
        if not paths:
            return DeliveryAttempt(True, False, f"{where}: nothing to send", {})
        try:
            outcomes = store_files(
                paths,
                host=self.host,
                port=self.port,
                called_ae=self.ae_title,
                calling_ae=self.calling_ae,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
        except AssociationFailed as exc:
            statuses = {o.sop_instance_uid: o.status for o in exc.outcomes if o.sop_instance_uid}
            notes = {o.sop_instance_uid: o.reason for o in exc.outcomes if o.sop_instance_uid and o.reason}
            reason = exc.reason
            if self.ssl_context is not None and not statuses:
                # The association layer cannot tell a refused certificate from a refused connection.
                cause = handshake_error(self.host, self.port, self.ssl_context, timeout=self.timeout)
                reason = f"{reason}; {cause}" if cause else reason
            kind = "permanent" if exc.permanent else "will retry"
            LOGGER.warning("delivery to %s failed (%s): %s", where, kind, reason)
            return DeliveryAttempt(False, exc.permanent, f"{where}: {reason}", statuses, notes)
        statuses = {o.sop_instance_uid: o.status for o in outcomes if o.sop_instance_uid}
        notes = {o.sop_instance_uid: o.reason for o in outcomes if o.sop_instance_uid and o.reason}
        unreadable = sum(1 for o in outcomes if not o.sop_instance_uid)
        return _summarise(where, len(paths), statuses, unreadable, notes)


class DicomWebDestination:
    """A DICOMweb server reached by STOW-RS (PS3.18 10.5) with ``dicomweb-client``.

    Parameters
    ----------
    name : str
        The destination's name in ``node.yaml``.
    url : str
        The DICOMweb root, e.g. ``http://orthanc:8042/dicom-web``; STOW-RS
        posts to ``{url}/studies``.
    auth : {"none", "basic", "bearer"}, optional
        HTTP authentication: Basic (RFC 7617) or a Bearer token (RFC 6750).
    username, password : str, optional
        For ``basic``.
    token : str, optional
        For ``bearer``.
    timeout : float, optional
        Seconds to connect and to wait for the response.
    verify_tls : bool or str, optional
        Check the server's certificate; a string is a CA bundle file.
    """

    def __init__(
        self,
        name: str,
        *,
        url: str,
        auth: Literal["none", "basic", "bearer"] = "none",
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        verify_tls: bool | str = True,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._client = dicomweb_client(
            f"destination {name}",
            url=self.url,
            auth=auth,
            username=username,
            password=password,
            token=token,
            timeout=timeout,
            verify_tls=verify_tls,
        )

    def __repr__(self) -> str:
        return f"DicomWebDestination({self.name!r}, {_without_userinfo(self.url)}, auth={self.auth})"

    def send(self, paths: Sequence[Path]) -> DeliveryAttempt:
        """Send the files in one STOW-RS request."""
        where = f"{self.name} ({_without_userinfo(self.url)})"
        if not paths:
            return DeliveryAttempt(True, False, f"{where}: nothing to send", {})
        datasets = []
        unreadable = 0
        for path in paths:
            try:
                datasets.append(_read_for_stow(path))
            except Exception as exc:  # UnreadableDicom, a missing UID, or a value pydicom cannot convert
                # One bad file would make the server refuse the whole request (HTTP 400).
                LOGGER.error("not sending %s to %s: unreadable (%s)", path, where, exc)
                unreadable += 1
        if not datasets:
            return DeliveryAttempt(False, True, f"{where}: no readable file among {len(paths)}", {})
        try:
            response = self._client.store_instances(datasets)
        except requests.HTTPError as exc:
            return self._refused(where, exc, len(paths), unreadable)
        except requests.RequestException as exc:
            reason = _connection_reason(exc)
            LOGGER.warning("delivery to %s failed (will retry): %s", where, reason)
            return DeliveryAttempt(False, False, f"{where}: {reason}", {})
        sent = [str(ds.SOPInstanceUID) for ds in datasets]
        statuses = _stow_statuses(response, sent, assume_success=True)
        return _summarise(where, len(paths), statuses, unreadable)

    def _refused(self, where: str, exc: requests.HTTPError, total: int, unreadable: int) -> DeliveryAttempt:
        response = exc.response
        code = response.status_code if response is not None else 0
        text = f"HTTP {code} {response.reason if response is not None else ''}".strip()
        if code == 401:
            text += " (authentication failed: check the username/password or token)"
        elif code == 403:
            text += " (not allowed: check the account's permissions)"
        permanent = 400 <= code < 500 and code not in _RETRYABLE_HTTP
        statuses = _stow_statuses(_response_dataset(response), [], assume_success=False)
        failures = [status for status in statuses.values() if not dimse_status.is_store_success(status)]
        if failures:  # 409 with a FailedSOPSequence: the instances' own reasons decide
            attempt = _summarise(where, total, statuses, unreadable)
            permanent = all(is_permanent_status(status) for status in failures)
            text = f"{text}: {attempt.message.removeprefix(where + ': ')}"
        LOGGER.warning("delivery to %s refused (%s): %s", where, "permanent" if permanent else "will retry", text)
        return DeliveryAttempt(False, permanent, f"{where}: {text}", statuses)


def _read_for_stow(path: Path) -> pydicom.Dataset:
    """A DICOM file with the UIDs STOW-RS needs.

    Raises
    ------
    core.errors.UnreadableDicom
        The file cannot be read as DICOM.
    ValueError
        An SOP Class or Instance UID, or the transfer syntax, is missing.
    """
    ds = read_dataset(path)
    missing = [keyword for keyword in ("SOPClassUID", "SOPInstanceUID") if not str(ds.get(keyword, "") or "")]
    if "TransferSyntaxUID" not in ds.file_meta:
        missing.append("TransferSyntaxUID (File Meta Information)")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return ds


def _stow_statuses(response: pydicom.Dataset | None, sent: Iterable[str], *, assume_success: bool) -> dict[str, int]:
    """Per-instance statuses from a STOW-RS response (PS3.18 Table 10.5.3-1)."""
    statuses: dict[str, int] = {}
    if response is None or len(response) == 0:
        # Some servers answer 200 with no body; then the HTTP status is the only word.
        return {uid: dimse_status.SUCCESS for uid in sent} if assume_success else {}
    for item in response.get("ReferencedSOPSequence", None) or []:
        warning = item.get("WarningReason", None)
        statuses[str(item.ReferencedSOPInstanceUID)] = int(warning) if warning is not None else 0
    for item in response.get("FailedSOPSequence", None) or []:
        reason = item.get("FailureReason", None)
        statuses[str(item.ReferencedSOPInstanceUID)] = (
            int(reason) if reason is not None else dimse_status.PROCESSING_FAILURE
        )
    return statuses


def _response_dataset(response: requests.Response | None) -> pydicom.Dataset | None:
    """The DICOM JSON body of an error response, when there is one."""
    if response is None or not response.content:
        return None
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except Exception:  # an HTML or plain error page: no per-instance detail
        return None


def _connection_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no response in time ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.SSLError):
        # OpenSSL's own words, e.g. "certificate verify failed: unable to get local issuer certificate"
        found = re.search(r"\[SSL: [A-Z0-9_]+\] ([^'\"(]+)", str(exc))
        detail = found.group(1).strip() if found else "certificate or protocol problem"
        return f"TLS handshake failed ({detail}; check verify_tls and ca_certificates)"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (connection refused or host unreachable)"
    return f"request failed ({type(exc).__name__})"


def _without_userinfo(url: str) -> str:
    """The URL without ``user:password@``, safe to show."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
