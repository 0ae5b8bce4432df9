"""Storage Commitment Push Model, the SCU side (PS3.4 Annex J), on pynetdicom.

The node asks a destination to commit instances it stored with an N-ACTION
(Request Storage Commitment, Action Type ID 1) listing them under a new
Transaction UID (:func:`request_commitment`). The answer is an N-EVENT-REPORT
(Event Type ID 1: all committed; 2: some failed, with a Failure Reason each)
that the SCP may send on a *new* association to the AE title that made the
request (PS3.4 J.3.3). Orthanc 1.10.1 always does so: it looks the calling AE
title up in its ``DicomModalities`` and connects to that entry's host and port,
a few milliseconds after its N-ACTION response, while the N-ACTION association
is still open. An AE title Orthanc does not know gets its association accepted
and then aborted at the N-ACTION.

The node's own DIMSE layer serves C-ECHO and C-STORE only; the reports are
received by :class:`CommitmentListener`, a pynetdicom AE with an AE title of
its own, which is also the calling AE title of the N-ACTION, so that the PACS
sends the report there and not to the node's Storage SCP.

Errors: :class:`CommitmentError` (``permanent`` when the destination refuses
the service itself, e.g. it does not support Storage Commitment).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = [
    "STORAGE_COMMITMENT_INSTANCE",
    "CommitmentError",
    "CommitmentListener",
    "CommitmentReport",
    "request_commitment",
]

LOGGER = logging.getLogger("ainode.commitment")

#: The well-known SOP Instance UID of Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Failure Reason (0008,1197) when an instance is listed in neither sequence of the report.
NOT_REPORTED = 0x0110


class CommitmentError(Exception):
    """The commitment request could not be made or was refused.

    Parameters
    ----------
    reason : str
        What happened, in one line.
    permanent : bool, optional
        True when asking again cannot help (the destination does not offer the service).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT: the transaction, what is committed and what failed (with its Failure Reason).

    ``failed`` also lists, with :data:`NOT_REPORTED`, the instances the report left out.
    """

    transaction_uid: str
    calling_ae: str
    committed: frozenset[str]
    failed: dict[str, int] = field(default_factory=dict)


def _ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def request_commitment(
    instances: Sequence[tuple[str, str]],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float = 30,
    ssl_context: ssl.SSLContext | None = None,
    transaction_uid: str | None = None,
) -> str:
    """Send an N-ACTION Request Storage Commitment for ``(SOP Class UID, SOP Instance UID)`` pairs.

    ``transaction_uid``: the caller's, when it records the transaction before asking (a report
    can arrive before this function returns); a new one otherwise.

    Returns
    -------
    str
        The new Transaction UID, which the report will carry.

    Raises
    ------
    CommitmentError
        No association, the Storage Commitment context refused (permanent), the
        association aborted (Orthanc does so for an AE title it does not know) or
        a failure status.
    """
    if not instances:
        raise ValueError("a commitment request lists at least one instance")
    where = f"{called_ae}@{host}:{port}"
    request = Dataset()
    request.TransactionUID = transaction_uid or generate_uid()
    request.ReferencedSOPSequence = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        request.ReferencedSOPSequence.append(item)
    ae = _ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    tls_args = (ssl_context, host if ssl_context.check_hostname else None) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)  # type: ignore[arg-type]
    if assoc.is_rejected:
        raise CommitmentError(f"{where} rejected the storage commitment association", permanent=False)
    if not assoc.is_established:
        if any(c.abstract_syntax == StorageCommitmentPushModel for c in assoc.rejected_contexts):
            # pynetdicom aborts an association in which no context was accepted
            raise CommitmentError(f"{where} does not support Storage Commitment Push Model", permanent=True)
        raise CommitmentError(f"could not associate with {where} to request storage commitment")
    try:
        if not any(c.abstract_syntax == StorageCommitmentPushModel for c in assoc.accepted_contexts):
            raise CommitmentError(f"{where} does not support Storage Commitment Push Model", permanent=True)
        status, _reply = assoc.send_n_action(request, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        if not status or "Status" not in status:
            raise CommitmentError(
                f"no answer from {where} to the storage commitment request (association aborted: does the "
                f"destination know the AE title {calling_ae}?)"
            )
        if status.Status != 0x0000:
            raise CommitmentError(
                f"{where} refused the storage commitment request (status 0x{status.Status:04X})",
                permanent=status.Status in (0x0112, 0x0122, 0x0123, 0x0124),
            )
    finally:
        if assoc.is_established:
            assoc.release()
    LOGGER.info("storage commitment of %d instance(s) requested from %s", len(instances), where)
    return str(request.TransactionUID)


class CommitmentListener:
    """A pynetdicom AE that receives Storage Commitment N-EVENT-REPORTs and hands each to ``on_report``.

    Parameters
    ----------
    ae_title : str
        The AE title the reports are addressed to (and the N-ACTIONs' calling AE title).
    host, port : str, int
        Where to listen; port 0 picks a free one (see :attr:`port`).
    on_report : callable
        Called with each :class:`CommitmentReport`, in the association's thread; it returns
        whether the transaction was known. An exception in it is answered with 0x0110
        (processing failure), so the PACS knows the report was not taken.
    """

    def __init__(self, ae_title: str, *, host: str, port: int, on_report: Callable[[CommitmentReport], bool]) -> None:
        self.ae_title = ae_title
        self.host = host
        self.on_report = on_report
        self._ae = _ae(ae_title)
        self._ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self._server: Any = None
        self._port = port
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port listened on (the real one once started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    def start(self) -> None:
        with self._lock:
            if self._server is None:
                self._server = self._ae.start_server(
                    (self.host, self._port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._handle)]
                )
                LOGGER.info("storage commitment reports received as %s on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server = None

    def _handle(self, event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        info: Dataset | None = event.event_information
        calling_ae = str(event.assoc.requestor.ae_title)
        if request.AffectedSOPClassUID != StorageCommitmentPushModel or info is None:
            return 0x0122, None
        if request.EventTypeID not in (1, 2) or "TransactionUID" not in info:
            LOGGER.warning("storage commitment report from %s without a transaction or event type", calling_ae)
            return 0x0110, None
        committed = frozenset(str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", None) or [])
        failed = {
            str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", NOT_REPORTED))
            for i in info.get("FailedSOPSequence", None) or []
        }
        report = CommitmentReport(str(info.TransactionUID), calling_ae, committed, failed)
        try:
            known = self.on_report(report)
        except Exception:  # a report that could not be recorded must not look taken
            LOGGER.exception("storage commitment report %s could not be recorded", report.transaction_uid)
            return 0x0110, None
        if not known:
            LOGGER.warning(
                "storage commitment report from %s for unknown transaction %s", calling_ae, report.transaction_uid
            )
        return 0x0000, None
