"""C-ECHO and C-STORE SCP: the node's receiving end (PS3.4 Annex A and B, PS3.8).

A small threaded server in the style of DCMTK's ``storescp``. One listener
thread accepts connections and negotiates them without blocking
(:mod:`dimse._negotiator`): TLS handshake (PS3.15 B.1) and A-ASSOCIATE-RQ under
one deadline (``association_request_timeout``), caps on connections still
negotiating (in total and per address), access control and the association
limit. Each admitted association is then served by its own thread that blocks
on the socket for whole PDUs (:mod:`dimse.upper_layer`,
:mod:`dimse._association`). Nothing polls or sleeps, which is what lets a
single association run at DCMTK's speed (pynetdicom's reactor polls).

* Accepted sockets get ``TCP_NODELAY`` (Nagle's algorithm costs ~40 ms per
  C-STORE round trip on loopback).
* Access control runs before any negotiation (PS3.8 7.1.1): the Called AE
  Title must be ours, the Calling AE Title must be listed in ``allowed_peers``
  (and come from the listed address, when one is given). Otherwise the
  association is rejected with A-ASSOCIATE-RJ ``rejected-permanent`` /
  ``service-user`` and the reason ``called-AE-title-not-recognised`` (0x07) or
  ``calling-AE-title-not-recognised`` (0x03) (PS3.8 9.3.4). **An empty
  ``allowed_peers`` rejects everybody** (fail closed): a node nobody
  configured accepts no data. Past ``max_associations``, or past the caps on
  negotiating connections, requests are rejected ``rejected-transient`` /
  ``service-provider (presentation)`` / ``local-limit-exceeded``.
* Presentation contexts: every storage SOP class pynetdicom knows and those
  only DCMTK's ``storescp`` accepts (:data:`EXTRA_STORAGE_SOP_CLASSES`:
  retired ones such as the old US and NM classes, DICOS, DICONDE), with
  :data:`ACCEPTED_TRANSFER_SYNTAXES`, and Verification (PS3.8 9.3.3.2).
* The A-ASSOCIATE-AC and the meta of every file written name ainode
  (:data:`core.identity.IMPLEMENTATION_CLASS_UID`, ``IMPLEMENTATION_VERSION_NAME``).
* C-STORE: the data set is written, exactly as received (never decoded, never
  transcoded), to a Part 10 file in ``incoming_dir`` while its fragments
  arrive; the file goes to the :data:`StoreSink` as a :class:`StoreRequest`
  and the C-STORE is answered with the sink's status. A sink that raises is
  answered ``0x0110`` processing failure; a data set that cannot be written
  or is larger than ``max_dataset_size`` is answered ``0xA700`` without the
  sink; a C-STORE whose SOP class is not its context's ``0x0122``. The peer
  never sees an exception.
* Accepted, rejected, released and aborted associations are reported to the
  optional ``on_association`` callback as :class:`AssociationEvent`
  (rejections from a queue, so that a flood of them never slows the listener).

Nothing here logs patient names or IDs: only AE titles, addresses and UIDs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts

from core import status
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse._association import Association, EventKind, Server
from dimse._incoming import FILE_PREFIX, WRITE_BUFFER, IncomingDataSet
from dimse._negotiator import LOCAL_LIMIT_EXCEEDED, Negotiator, Rejection
from dimse.commands import VERIFICATION_SOP_CLASS, Command, encode_file_meta
from dimse.upper_layer import DICOM_APPLICATION_CONTEXT, AssociateRequest, PresentationContext

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "AllowedPeer",
    "AssociationEvent",
    "StorageSCP",
    "StoreRequest",
    "StoreSink",
    "spool_part10",
]

LOGGER = logging.getLogger("ainode.dimse.scp")

#: Transfer syntaxes accepted for every storage SOP class (PS3.5 Annex A). A
#: requestor offering several in one presentation context gets the first it
#: proposed that is here (:func:`dimse.upper_layer.negotiate`).
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: Storage SOP classes DCMTK's ``storescp`` (3.6.7) accepts that pynetdicom's table lacks: retired
#: ones still sent by old modalities, trial ones, DICOS and DICONDE. Found by proposing every UID
#: libdcmdata knows to ``storescp`` and keeping those it accepted.
EXTRA_STORAGE_SOP_CLASSES: Mapping[str, str] = {
    "1.2.840.10008.5.1.1.27": "Stored Print Storage (Retired)",
    "1.2.840.10008.5.1.1.29": "Hardcopy Grayscale Image Storage (Retired)",
    "1.2.840.10008.5.1.1.30": "Hardcopy Color Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.5": "Nuclear Medicine Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.8": "Standalone Overlay Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.9": "Standalone Curve Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.9.1": "Waveform Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.10": "Standalone Modality LUT Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.11": "Standalone VOI LUT Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.77.1": "VL Image Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.77.2": "VL Multi-frame Image Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.88.1": "Text SR Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.88.2": "Audio SR Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.88.3": "Detail SR Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.88.4": "Comprehensive SR Storage - Trial (Retired)",
    "1.2.840.10008.5.1.4.1.1.129": "Standalone PET Curve Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOS CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOS Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOS Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOS Threat Detection Report Storage",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS 2D AIT Storage",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS 3D AIT Storage",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOS Quadrupole Resonance (QR) Storage",
    "1.2.840.10008.5.1.4.1.1.601.1": "Eddy Current Image Storage",
    "1.2.840.10008.5.1.4.1.1.601.2": "Eddy Current Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.34.1": "RT Beams Delivery Instruction Storage - Trial (Retired)",
}

#: Abstract syntax -> transfer syntaxes we accept for it, best first: every storage SOP class
#: pynetdicom or DCMTK's storescp knows, and Verification.
SUPPORTED_CONTEXTS: Mapping[str, tuple[str, ...]] = {
    **{str(cx.abstract_syntax): ACCEPTED_TRANSFER_SYNTAXES for cx in AllStoragePresentationContexts},
    **dict.fromkeys(EXTRA_STORAGE_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES),
    VERIFICATION_SOP_CLASS: (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)),
}

#: Smallest ``max_pdu`` accepted (DCMTK's lower bound too).
MIN_MAX_PDU = 4096

# A-ASSOCIATE-RJ parameters (PS3.8 Table 9-21).
_REJECTED_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_SOURCE_SERVICE_PROVIDER_ACSE = 0x02
_APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
_CALLING_AE_NOT_RECOGNISED = 0x03
_CALLED_AE_NOT_RECOGNISED = 0x07
_PROTOCOL_VERSION_NOT_SUPPORTED = 0x02
#: Rejections waiting to be reported to ``on_association``; more are logged only (a flood must not
#: grow memory, nor slow the listener with the callback's work).
_MAX_PENDING_REPORTS = 1024


@dataclass(frozen=True)
class AllowedPeer:
    """A peer allowed to open associations with the SCP.

    Parameters
    ----------
    ae_title : str
        The Calling AE Title the peer must present (PS3.8 9.3.2).
    host : str, optional
        The IP address the peer must connect from; ``None`` allows any address.
    """

    ae_title: str
    host: str | None = None


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE request, as handed to the :data:`StoreSink`.

    ``path`` is a complete DICOM Part 10 file (PS3.10 7.1) of ``size`` bytes:
    128-byte preamble, ``DICM``, File Meta Information (Transfer Syntax UID =
    the one used on the wire, Implementation Class UID and Version Name =
    ainode's, Source AE Title = the caller) and the data set bytes exactly as
    received, never transcoded. The file is not fsynced.

    The sink owns the file while it runs: it may move it away (``os.replace``
    within the same file system, e.g. into a spool); once it returns, the SCP
    deletes ``path`` if it is still there.
    """

    calling_ae: str
    peer_address: str
    peer_port: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int

    @property
    def data(self) -> bytes:
        """The whole file, read from ``path`` at each access: for small sinks and tests."""
        return self.path.read_bytes()


#: Makes an instance durable and recorded; returns a status from :mod:`core.status`.
StoreSink = Callable[[StoreRequest], int]


@dataclass(frozen=True)
class AssociationEvent:
    """What happened to one association, for auditing and counting."""

    kind: EventKind  # "accepted", "rejected", "released" or "aborted"
    calling_ae: str
    peer_address: str
    reason: str | None = None


def spool_part10(
    directory: Path,
    part10: bytes | BinaryIO,
    *,
    calling_ae: str,
    peer_address: str,
    peer_port: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
) -> StoreRequest:
    """Write a whole Part 10 file received by another intake (STOW-RS, C-GET) as a :class:`StoreRequest`.

    The bytes (or the rest of a binary file object, copied in
    :data:`~dimse._incoming.WRITE_BUFFER` chunks) are written as they are, into
    a new ``.incoming-scp-*.dcm`` file in ``directory``; nothing is checked or
    fsynced. The caller then hands the request to the sink and deletes
    ``path`` if it is still there once the sink has returned, as the SCP does.

    Raises
    ------
    OSError
        The file could not be written (the partial file is deleted).
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix=FILE_PREFIX, suffix=".dcm")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=WRITE_BUFFER) as file:
            if isinstance(part10, (bytes, bytearray, memoryview)):
                file.write(part10)
            else:
                shutil.copyfileobj(part10, file, WRITE_BUFFER)
            size = file.tell()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return StoreRequest(
        calling_ae=calling_ae,
        peer_address=peer_address,
        peer_port=peer_port,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        path=path,
        size=size,
    )


def _same_address(actual: str, allowed: str) -> bool:
    """Compare IP addresses, treating IPv4-mapped IPv6 addresses as IPv4."""
    try:
        a, b = ipaddress.ip_address(actual), ipaddress.ip_address(allowed)
    except ValueError:
        return actual == allowed
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    return a == b


class StorageSCP:
    """A Storage SCP (PS3.4 Annex B) and Verification SCP (PS3.4 Annex A).

    Parameters
    ----------
    ae_title : str
        Our AE title; associations calling another title are rejected.
    port : int
        TCP port to listen on; ``0`` picks a free one (see :attr:`port`).
    sink : StoreSink
        Called once per C-STORE with a :class:`StoreRequest`; must make the
        instance durable and return a DIMSE status (PS3.4 B.2.3). Called from
        the association's thread: associations run concurrently.
    allowed_peers : sequence of AllowedPeer
        Who may associate. Empty means nobody (fail closed).
    host : str, optional
        Address to bind.
    max_pdu : int, optional
        Maximum length of a P-DATA-TF PDU we receive, advertised in the
        A-ASSOCIATE-AC (PS3.8 D.1); a longer one aborts the association. 4096
        to 2**32-1: ``0`` ("unlimited" in PS3.8) is refused, as it would let
        one PDU header make the node allocate 4 GiB.
    max_associations : int, optional
        Concurrent associations; further requests are rejected transient,
        ``local-limit-exceeded`` (PS3.8 9.3.4).
    association_request_timeout : float, optional
        Seconds from a connection's accept to the end of its A-ASSOCIATE-RQ,
        TLS handshake included: a deadline, not extended by reads.
    acse_timeout : float, optional
        Seconds a rejected, released or aborted connection waits for the peer
        to close it (ARTIM, PS3.8 9.1.5).
    network_timeout, dimse_timeout : float, optional
        Seconds for a whole PDU to arrive between DIMSE messages (an idle
        association) and inside one; the association is aborted past them.
    max_negotiating, max_negotiating_per_address : int, optional
        Connections accepted but not yet associated, in total and from one
        address; more are rejected transient ``local-limit-exceeded``, or take
        the place of one negotiating for over a second (:mod:`dimse._negotiator`).
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context (PS3.15 B.1); ``None`` for plain TCP.
    on_association : callable, optional
        Receives an :class:`AssociationEvent` for every accepted, rejected,
        released or aborted association; exceptions it raises are logged.
    incoming_dir : Path, optional
        Where each C-STORE's file is written while its fragments arrive (the
        node passes its spool's temporary folder, on the spool's file system,
        so the sink can keep a file by renaming it). ``None``: a private
        temporary folder, created by :meth:`start` and removed by :meth:`stop`.
    max_dataset_size : int, optional
        Largest data set accepted, in bytes (default 4 GiB, room for a 2 GB
        multi-frame). A larger one is read to its end without being kept and
        answered ``0xA700`` (out of resources); the association continues.
    """

    #: Implementation Class UID and Version Name sent in the A-ASSOCIATE-AC and
    #: written in the File Meta Information (PS3.7 D.3.3.2, PS3.10 7.1): ainode's own.
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    supported_contexts: Mapping[str, tuple[str, ...]] = SUPPORTED_CONTEXTS

    def __init__(
        self,
        *,
        ae_title: str,
        port: int,
        sink: StoreSink,
        allowed_peers: Sequence[AllowedPeer],
        host: str = "0.0.0.0",
        max_pdu: int = 65536 * 4,
        max_associations: int = 10,
        association_request_timeout: float = 10,
        network_timeout: float = 60,
        acse_timeout: float = 30,
        dimse_timeout: float = 60,
        max_negotiating: int = 64,
        max_negotiating_per_address: int = 8,
        ssl_context: ssl.SSLContext | None = None,
        on_association: Callable[[AssociationEvent], None] | None = None,
        incoming_dir: Path | None = None,
        max_dataset_size: int = 4 << 30,
    ) -> None:
        if not ae_title.strip() or len(ae_title.strip()) > 16:
            raise ValueError(f"ae_title must be 1 to 16 characters, got {ae_title!r}")
        if max_associations < 1:
            raise ValueError(f"max_associations must be at least 1, got {max_associations}")
        if not MIN_MAX_PDU <= max_pdu < 2**32:
            raise ValueError(
                f"max_pdu must be {MIN_MAX_PDU} to {2**32 - 1} bytes, got {max_pdu}"
                " (0, 'unlimited', is not accepted: one PDU header could make the node allocate 4 GiB)"
            )
        if max_negotiating < 1 or max_negotiating_per_address < 1:
            raise ValueError(
                f"max_negotiating and max_negotiating_per_address must be at least 1,"
                f" got {max_negotiating} and {max_negotiating_per_address}"
            )
        for name, value in (
            ("association_request_timeout", association_request_timeout),
            ("acse_timeout", acse_timeout),
            ("network_timeout", network_timeout),
            ("dimse_timeout", dimse_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {value}")
        if max_dataset_size < 1:
            raise ValueError(f"max_dataset_size must be at least 1 byte, got {max_dataset_size}")
        for peer in allowed_peers:
            if not isinstance(peer, AllowedPeer):
                raise TypeError(f"allowed_peers must hold AllowedPeer, got {peer!r}")
        self.ae_title = ae_title.strip()
        self.max_pdu = max_pdu
        self.max_associations = max_associations
        self.association_request_timeout = association_request_timeout
        self.network_timeout = network_timeout
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.max_negotiating = max_negotiating
        self.max_negotiating_per_address = max_negotiating_per_address
        self.max_dataset_size = max_dataset_size
        self._incoming_dir = incoming_dir
        self._private_dir: Path | None = None  # made by start() when no incoming_dir is given
        self._requested_port = port
        self._host = host
        self._sink = sink
        self._allowed_peers = tuple(allowed_peers)
        self._ssl_context = ssl_context
        self._on_association = on_association
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._negotiator: Negotiator | None = None
        self._associations: set[Association] = set()
        self._slots_in_use = 0
        self._reports: queue.Queue[AssociationEvent | None] = queue.Queue(_MAX_PENDING_REPORTS)
        self._report_thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start listening; returns at once, associations run in background threads."""
        with self._lock:
            if self._listener is not None:
                raise RuntimeError("StorageSCP is already started")
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            listener = socket.create_server((self._host, self._requested_port), family=family, backlog=64)
            if self._incoming_dir is None:
                self._private_dir = Path(tempfile.mkdtemp(prefix="ainode-scp-"))
            self._listener = listener
            self._negotiator = Negotiator(
                listener,
                ssl_context=self._ssl_context,
                request_timeout=self.association_request_timeout,
                linger_timeout=self.acse_timeout,
                max_negotiating=self.max_negotiating,
                max_per_address=self.max_negotiating_per_address,
                admit=self._admit,
                rejected=self._report_rejection,
                start=self._start_association,
            )
            self._accept_thread = threading.Thread(
                target=self._negotiator.run, name=f"dimse-scp-{self.ae_title}", daemon=True
            )
            self._report_thread = threading.Thread(
                target=self._report_loop, name=f"dimse-scp-{self.ae_title}-reports", daemon=True
            )
            self._report_thread.start()
            self._accept_thread.start()
        LOGGER.info(
            "Storage SCP %s listening on %s:%d (%d allowed peers)",
            self.ae_title,
            self._host,
            self.port,
            len(self._allowed_peers),
        )

    def stop(self, timeout: float = 30) -> None:
        """Stop accepting connections and wait for open associations to end.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for open associations to release; those still open
            then are aborted (A-ABORT, PS3.8 7.3).
        """
        with self._lock:
            listener, self._listener = self._listener, None
            accept_thread, self._accept_thread = self._accept_thread, None
            negotiator, self._negotiator = self._negotiator, None
            report_thread, self._report_thread = self._report_thread, None
        if listener is None:
            return
        if negotiator is not None:
            negotiator.stop()  # closes the connections not yet associated
        if accept_thread is not None:
            accept_thread.join(5)
        listener.close()
        deadline = time.monotonic() + timeout
        for association in self._snapshot():
            # only associations still established are worth waiting for
            if association.established:
                association.thread.join(max(0.0, deadline - time.monotonic()))
        remaining = [a for a in self._snapshot() if a.thread.is_alive()]
        for association in remaining:
            association.request_stop()
        for association in remaining:
            association.thread.join(5)
        if report_thread is not None:
            self._reports.put(None)
            report_thread.join(5)
        private, self._private_dir = self._private_dir, None
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        LOGGER.info("Storage SCP %s stopped", self.ae_title)

    @property
    def port(self) -> int:
        """The bound TCP port (the actual one when started with ``port=0``)."""
        listener = self._listener
        if listener is None:
            return self._requested_port
        return int(listener.getsockname()[1])

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- connections -----------------------------------------------------------------

    def _start_association(self, sock: socket.socket, address: tuple[str, int], request: AssociateRequest) -> None:
        """Serve an admitted association in its own thread (called by the negotiator, which holds no lock)."""
        association = Association(self._server(), sock, address, request)
        with self._lock:
            self._associations.add(association)
        try:
            association.thread.start()
        except RuntimeError as exc:  # cannot start a new thread
            LOGGER.error("no thread for the association from %s: %s", address[0], exc)
            with self._lock:
                self._associations.discard(association)
            self._release_slot()
            with contextlib.suppress(OSError):
                sock.close()

    def _server(self) -> Server:
        """What an association uses of this SCP: the current settings and the calls below."""
        return Server(
            max_pdu=self.max_pdu,
            acse_timeout=self.acse_timeout,
            network_timeout=self.network_timeout,
            dimse_timeout=self.dimse_timeout,
            supported_contexts=self.supported_contexts,
            implementation_class_uid=self.implementation_class_uid,
            implementation_version_name=self.implementation_version_name,
            leave=self._release_slot,
            report=self._notify,
            begin_store=self._begin_store,
            store=self._store,
            closed=self._forget,
        )

    def _snapshot(self) -> list[Association]:
        with self._lock:
            return list(self._associations)

    def _forget(self, association: Association) -> None:
        with self._lock:
            self._associations.discard(association)

    def _acquire_slot(self) -> bool:
        """Count one more established association, unless ``max_associations`` are."""
        with self._lock:
            if self._slots_in_use >= self.max_associations:
                return False
            self._slots_in_use += 1
            return True

    def _release_slot(self) -> None:
        with self._lock:
            self._slots_in_use -= 1

    # -- access control --------------------------------------------------------------

    def _check_peer(self, called_ae: str, calling_ae: str, address: str) -> tuple[int, str] | None:
        """Return ``(diagnostic, reason)`` when the association must be rejected."""
        if called_ae.strip() != self.ae_title:
            return _CALLED_AE_NOT_RECOGNISED, "called-AE-title-not-recognised"
        titled = [p for p in self._allowed_peers if p.ae_title.strip() == calling_ae.strip()]
        if not titled:
            return _CALLING_AE_NOT_RECOGNISED, "calling-AE-title-not-recognised"
        if not any(p.host is None or _same_address(address, p.host) for p in titled):
            return _CALLING_AE_NOT_RECOGNISED, "calling-AE-title-not-recognised (address not allowed)"
        return None

    def _admit(self, request: AssociateRequest, address: str) -> Rejection | None:
        """The rejection to send, or ``None`` when the association may proceed and holds a slot."""
        rejection = self._check_request(request, address)
        if rejection is None and not self._acquire_slot():
            return LOCAL_LIMIT_EXCEEDED
        return rejection

    def _check_request(self, request: AssociateRequest, address: str) -> Rejection | None:
        """The A-ASSOCIATE-RJ for a request we refuse (PS3.8 9.3.4)."""
        try:
            verdict = self._check_peer(request.called_ae, request.calling_ae, address)
        except Exception:  # fail closed: a bug here must not let anyone in
            LOGGER.exception("access check failed for %s at %s", request.calling_ae, address)
            verdict = (_CALLING_AE_NOT_RECOGNISED, "access check failed")
        if verdict is not None:
            return Rejection(_REJECTED_PERMANENT, _SOURCE_SERVICE_USER, *verdict)
        if not request.protocol_version & 0x0001:
            return Rejection(
                _REJECTED_PERMANENT,
                _SOURCE_SERVICE_PROVIDER_ACSE,
                _PROTOCOL_VERSION_NOT_SUPPORTED,
                "protocol-version-not-supported",
            )
        if request.application_context != DICOM_APPLICATION_CONTEXT:
            return Rejection(
                _REJECTED_PERMANENT,
                _SOURCE_SERVICE_USER,
                _APPLICATION_CONTEXT_NOT_SUPPORTED,
                "application-context-name-not-supported",
            )
        return None

    # -- association notifications -----------------------------------------------

    def _report_rejection(self, request: AssociateRequest, address: str, rejection: Rejection) -> None:
        """Queue a rejection for ``on_association`` (called by the negotiator, which must not wait)."""
        if self._on_association is None:
            return
        try:
            self._reports.put_nowait(AssociationEvent("rejected", request.calling_ae, address, rejection.text))
        except queue.Full:
            LOGGER.warning("rejection of %r at %s not reported: too many pending", request.calling_ae, address)

    def _report_loop(self) -> None:
        while (event := self._reports.get()) is not None:
            self._deliver(event)

    def _notify(self, kind: EventKind, association: Association, reason: str | None) -> None:
        if self._on_association is None:
            return
        self._deliver(AssociationEvent(kind, association.calling_ae, association.peer_address, reason))

    def _deliver(self, event: AssociationEvent) -> None:
        assert self._on_association is not None
        try:
            self._on_association(event)
        except Exception:
            LOGGER.exception("on_association callback failed for %s", event)

    # -- C-STORE ----------------------------------------------------------------------

    def _begin_store(self, association: Association, context: PresentationContext, command: Command) -> IncomingDataSet:
        """Open the file a C-STORE-RQ's data set is written to, or refuse the request (PS3.4 B.2.3).

        A C-STORE must name the SOP class of its presentation context (PS3.7
        9.1.1.1, PS3.8 9.3.2.2: a context is negotiated for one abstract
        syntax); one that names another, names none, or comes on the
        Verification context is answered ``0x0122`` (Refused: SOP class not
        supported, PS3.7 C.5.3) once its data set has been read, and nothing is
        kept. The data set is never decoded to compare: the command decides.
        """
        sop_class = command.affected_sop_class_uid
        refusal = None
        if context.abstract_syntax == VERIFICATION_SOP_CLASS:
            refusal = "C-STORE on the Verification presentation context"
        elif not sop_class:
            refusal = "C-STORE without an Affected SOP Class UID"
        elif sop_class != context.abstract_syntax:
            refusal = f"C-STORE of SOP class {sop_class} on a presentation context for {context.abstract_syntax}"
        if refusal is not None:
            LOGGER.warning(
                "refusing C-STORE of %s from %r at %s: %s",
                command.affected_sop_instance_uid,
                association.calling_ae,
                association.peer_address,
                refusal,
            )
            return IncomingDataSet.refused(status.SOP_CLASS_NOT_SUPPORTED, refusal)
        meta = encode_file_meta(
            sop_class_uid=sop_class,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax_uid=context.transfer_syntax,
            implementation_class_uid=self.implementation_class_uid,
            implementation_version_name=self.implementation_version_name,
            source_ae_title=association.calling_ae,
        )
        directory = self._incoming_dir or self._private_dir
        assert directory is not None, "a started SCP has an incoming folder"
        return IncomingDataSet(directory, meta, self.max_dataset_size)

    def _store(
        self, association: Association, context: PresentationContext, command: Command, incoming: IncomingDataSet
    ) -> int:
        """Pass one received instance to the sink (PS3.4 B.2.2); the status to answer.

        Never raises: anything unexpected is answered with 0x0110. The file is
        deleted once the sink has returned, unless the sink moved it away.
        """
        sop_instance_uid = command.affected_sop_instance_uid
        path = incoming.finish()
        if path is None:
            LOGGER.error(
                "C-STORE of %s from %r at %s:%d not kept (%d bytes received): %s; answering 0x%04X",
                sop_instance_uid,
                association.calling_ae,
                association.peer_address,
                association.peer_port,
                incoming.received,
                incoming.failure,
                incoming.status,
            )
            return incoming.status
        try:
            request = StoreRequest(
                calling_ae=association.calling_ae,
                peer_address=association.peer_address,
                peer_port=association.peer_port,
                sop_class_uid=command.affected_sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax_uid=context.transfer_syntax,
                path=path,
                size=incoming.size,
            )
            result = int(self._sink(request))
            if not 0 <= result <= 0xFFFF:
                raise ValueError(f"the sink returned {result}, not a 16-bit DIMSE status")
        except Exception:
            LOGGER.exception(
                "C-STORE of %s from %r failed in the sink; answering 0x%04X",
                sop_instance_uid,
                association.calling_ae,
                status.PROCESSING_FAILURE,
            )
            return status.PROCESSING_FAILURE
        finally:
            with contextlib.suppress(OSError):  # FileNotFoundError when the sink kept it
                path.unlink()
        LOGGER.debug(
            "C-STORE %s from %r (%s): %s",
            sop_instance_uid,
            association.calling_ae,
            request.transfer_syntax_uid,
            status.describe(result),
        )
        return result
