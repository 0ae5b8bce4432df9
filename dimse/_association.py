"""One admitted association of :class:`dimse.scp.StorageSCP`, served by its own thread.

The association knows its server only through :class:`Server`, defined here:
the settings it negotiates and times out with and five calls (leave, report,
begin_store, store, closed). The SCP builds one for each association it
admits, so this module never imports :mod:`dimse.scp`.

Everything before -- the TLS handshake, reading the A-ASSOCIATE-RQ under its
deadline, access control, the association limit and A-ASSOCIATE-RJ -- happens
in the listener's thread (:mod:`dimse._negotiator`), so a thread exists only
for an admitted association. The thread then walks the acceptor side of the
PS3.8 9.2 state machine, reduced to what a Storage SCP meets:

* The A-ASSOCIATE-RQ: presentation contexts are negotiated (A-ASSOCIATE-AC).
* Sta6, established: each PDU's header is checked before its body is read
  (P-DATA-TF, A-RELEASE-RQ and A-ABORT only; a P-DATA-TF no longer than the
  maximum length we advertised), and the whole PDU must arrive within the
  network timeout (between messages) or the DIMSE timeout (inside one): a
  deadline per PDU, not per read. P-DATA-TF fragments are gathered into DIMSE
  messages (PS3.8 Annex E): a command set in memory, a data set written to
  its file as it arrives (:mod:`dimse._incoming`); C-ECHO-RQ and C-STORE-RQ
  are answered (PS3.7 9.1.5, 9.1.1); A-RELEASE-RQ is answered with
  A-RELEASE-RP; A-ABORT ends the association.
* Anything else (an unknown PDU, a PDU out of place or too long, an
  inconsistent fragment) aborts with A-ABORT, source service-provider (PS3.8
  Table 9-26); so do the timeouts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from core import status
from dimse._incoming import IncomingDataSet
from dimse.commands import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    RESPONSE_BIT,
    Command,
    decode_command,
    encode_response,
)
from dimse.errors import ConnectionClosed, ProtocolError, ProtocolViolation
from dimse.upper_layer import (
    A_ABORT,
    A_RELEASE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    CONTEXT_ACCEPTED,
    P_DATA_TF,
    AssociateRequest,
    PDUSocket,
    PresentationContext,
    encode_abort,
    encode_associate_ac,
    encode_p_data,
    encode_release_rp,
    negotiate,
)

LOGGER = logging.getLogger("ainode.dimse.scp")

#: The PDUs a requestor may send in Sta6 (PS3.8 Table 9-10); any other is aborted on its header.
_ESTABLISHED_PDUS = frozenset({P_DATA_TF, A_RELEASE_RQ, A_ABORT})
#: A C-STORE-RQ command set is ~200 bytes; one longer than this is not a command set.
_MAX_COMMAND_SET = 1 << 16
#: Data set bytes are read from the socket in pieces of at most this many bytes.
_READ_PIECE = 1 << 18
#: A PDV item's header: item length, presentation context ID, message control header (PS3.8 9.3.5.1, E.2).
_PDV = struct.Struct(">LBB")

#: What happened to an association, as :class:`dimse.scp.AssociationEvent` says it.
EventKind = Literal["accepted", "rejected", "released", "aborted"]


@dataclass(frozen=True)
class Server:
    """All an :class:`Association` uses of the server that accepted its connection.

    Settings (see :class:`dimse.scp.StorageSCP` for their meaning): ``max_pdu``
    (the longest P-DATA-TF we accept and advertise), the three timeouts, ``supported_contexts`` (abstract
    syntax to accepted transfer syntaxes, best first) and the implementation
    class UID and version name sent in the A-ASSOCIATE-AC.

    Calls, each made from the association's thread:

    ``leave()``
        Give back the ``max_associations`` slot the association was admitted
        with; called once, when it ends.
    ``report(kind, association, reason)``
        An association was accepted, released or aborted; never raises.
    ``begin_store(association, context, command)``
        A C-STORE-RQ announcing a data set arrived on ``context``: the
        :class:`~dimse._incoming.IncomingDataSet` its fragments are written to
        (or one that only discards them, when the request is refused).
    ``store(association, context, command, incoming)``
        The last fragment arrived: hand the file over; returns the status to
        answer with and never raises.
    ``closed(association)``
        The connection is closed and the thread about to end.
    """

    max_pdu: int
    acse_timeout: float
    network_timeout: float
    dimse_timeout: float
    supported_contexts: Mapping[str, Sequence[str]]
    implementation_class_uid: str
    implementation_version_name: str
    leave: Callable[[], None]
    report: Callable[[EventKind, Association, str | None], None]
    begin_store: Callable[[Association, PresentationContext, Command], IncomingDataSet]
    store: Callable[[Association, PresentationContext, Command, IncomingDataSet], int]
    closed: Callable[[Association], None]


class Association:
    """The acceptor side of one association (PS3.8 9.2), run by :meth:`run` in its own thread.

    Parameters
    ----------
    server : Server
        The settings and calls of the server that accepted the connection.
    sock : socket.socket
        The connection (after its TLS handshake), in blocking mode.
    address : tuple
        The peer's address as returned by ``accept()``.
    request : AssociateRequest
        Its A-ASSOCIATE-RQ, admitted: the association holds a slot.
    """

    def __init__(
        self, server: Server, sock: socket.socket, address: tuple[str, int], request: AssociateRequest
    ) -> None:
        self.server = server
        self.sock = sock
        self.peer_address = str(address[0])
        self.peer_port = int(address[1])
        self.request = request
        self.calling_ae = request.calling_ae
        #: True between A-ASSOCIATE-AC and the release or abort.
        self.established = False
        self.thread = threading.Thread(
            target=self.run, name=f"dimse-scp-{self.peer_address}:{self.peer_port}", daemon=True
        )
        self._stop_event = threading.Event()  # set by request_stop()
        self._holds_slot = True
        self._peer_max_pdu = 0
        self._contexts: dict[int, PresentationContext] = {}
        # the DIMSE message being received (PS3.8 E.2)
        self._message_context = -1
        self._command: Command | None = None
        self._command_parts = bytearray()  # copied: a view would keep its whole PDU alive
        self._incoming: IncomingDataSet | None = None  # the data set of self._command
        self._pdv_header = bytearray(_PDV.size)
        self._pdv_view = memoryview(self._pdv_header)
        self._piece = memoryview(bytearray(_READ_PIECE))  # data set bytes on their way to the file
        self._pdus = PDUSocket(sock, server.max_pdu)

    # -- thread entry and shutdown ------------------------------------------------------

    def run(self) -> None:
        """Serve the association until it is rejected, released or aborted; never raises."""
        try:
            if self._accept(self.request):
                self._serve_established()
        except Exception:  # a bug here must cost one association, not the server
            LOGGER.exception("association with %s:%d failed", self.peer_address, self.peer_port)
            self._abort(ABORT_SOURCE_PROVIDER, ABORT_REASON_NOT_SPECIFIED, "internal error")
        finally:
            if self._incoming is not None:  # the association ended inside a data set
                self._incoming.discard()
                self._incoming = None
            self._free_slot()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.server.closed(self)

    def request_stop(self) -> None:
        """Make the thread abort the association at its next read (PS3.8 7.3).

        Called from :meth:`StorageSCP.stop`. On plain TCP the thread itself sends
        the A-ABORT (service-user), so nothing writes to the socket from two
        threads. A TLS connection whose reading side was shut cannot be written
        to any more (OpenSSL fails it on the early end of file), so it is simply
        closed, which the peer sees as an A-P-ABORT.
        """
        self._stop_event.set()
        how = socket.SHUT_RDWR if isinstance(self.sock, ssl.SSLSocket) else socket.SHUT_RD
        try:
            # shutdown() wakes a recv() blocked in the association thread; on a dup
            # because SSLSocket.shutdown() would also drop its TLS state under the thread.
            with socket.socket(fileno=socket.dup(self.sock.fileno())) as duplicate:
                duplicate.shutdown(how)
        except OSError:
            pass  # already closed

    # -- the A-ASSOCIATE-AC -----------------------------------------------------------------

    def _accept(self, request: AssociateRequest) -> bool:
        """Answer the admitted A-ASSOCIATE-RQ with an A-ASSOCIATE-AC (PS3.8 9.3.3); False if the peer is gone."""
        server = self.server
        results = negotiate(request.contexts, server.supported_contexts)
        self._contexts = {c.context_id: c for c in results if c.result == CONTEXT_ACCEPTED}
        self._peer_max_pdu = request.max_pdu
        accept = encode_associate_ac(
            request,
            results,
            max_pdu=server.max_pdu,
            implementation_class_uid=server.implementation_class_uid,
            implementation_version_name=server.implementation_version_name,
        )
        LOGGER.info(
            "association accepted from %r at %s:%d (%d of %d presentation contexts)",
            request.calling_ae,
            self.peer_address,
            self.peer_port,
            len(self._contexts),
            len(results),
        )
        self.established = True
        server.report("accepted", self, None)
        try:
            self._pdus.send(accept)
        except OSError as exc:
            self._ended("aborted", f"connection lost: {exc}")
            return False
        return True

    # -- Sta6: established ---------------------------------------------------------------

    def _serve_established(self) -> None:
        server = self.server
        # sends (responses, A-RELEASE-RP) are bounded by the DIMSE timeout; reads by the deadlines below
        self._pdus.send_timeout = server.dimse_timeout
        while True:
            # the network timeout between messages, the DIMSE timeout inside one: each for a whole PDU
            in_message = self._command is not None or bool(self._command_parts)
            timeout = server.dimse_timeout if in_message else server.network_timeout
            try:
                if self._stop_event.is_set():
                    raise ConnectionClosed("stop requested")
                deadline = time.monotonic() + timeout
                pdu_type, length = self._pdus.read_header(_ESTABLISHED_PDUS, deadline)
                if pdu_type == P_DATA_TF:
                    self._receive_p_data(length, deadline)
                    continue
                self._pdus.read_body(length, deadline)  # A-RELEASE-RQ or A-ABORT: 4 bytes, nothing to use
                if pdu_type == A_RELEASE_RQ:
                    self._release()
                    return
                if pdu_type == A_ABORT:
                    LOGGER.warning("association with %r at %s aborted by the peer", self.calling_ae, self.peer_address)
                    self._ended("aborted", "aborted by the peer")
                    return
            except TimeoutError:
                which = "DIMSE timeout" if in_message else "network timeout"
                LOGGER.warning(
                    "association with %r at %s: %s (%s s), aborting", self.calling_ae, self.peer_address, which, timeout
                )
                self._abort(ABORT_SOURCE_PROVIDER, ABORT_REASON_NOT_SPECIFIED, which)
                return
            except (ProtocolError, ProtocolViolation) as exc:
                LOGGER.warning("protocol error from %r at %s: %s; aborting", self.calling_ae, self.peer_address, exc)
                reason = exc.reason if isinstance(exc, ProtocolError) else ABORT_INVALID_PARAMETER
                self._abort(ABORT_SOURCE_PROVIDER, reason, f"protocol error: {exc}")
                return
            except (ConnectionClosed, OSError) as exc:
                if self._stop_event.is_set():
                    LOGGER.warning(
                        "aborting association with %r at %s: the SCP stops", self.calling_ae, self.peer_address
                    )
                    self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED, "stopped")
                else:
                    LOGGER.warning("association with %r at %s lost: %s", self.calling_ae, self.peer_address, exc)
                    self._ended("aborted", "connection closed without release")
                return

    def _receive_p_data(self, length: int, deadline: float) -> None:
        """Read one P-DATA-TF body PDV by PDV into the current message; answer it when complete (PS3.8 E.2).

        A message is its command set's fragments, then, if the command says so,
        its data set's, all on one presentation context. Command fragments are
        gathered (64 KiB at most); data set fragments go to the data set's file
        in pieces of at most :data:`_READ_PIECE`, so even a PDU as long as
        ``max_pdu`` allows is never held in memory.

        Raises
        ------
        ProtocolError, ProtocolViolation
            PDV items that do not fit the PDU, fragments out of order or on
            another context, an undecodable or oversized command set.
        """
        pdus = self._pdus
        remaining = length
        while remaining:
            if remaining < _PDV.size:
                raise ProtocolError("truncated PDV item in P-DATA-TF")
            pdus.read_into(self._pdv_view, deadline)
            item_length, context_id, control = _PDV.unpack(self._pdv_header)
            if item_length < 2 or 4 + item_length > remaining:
                raise ProtocolError(f"PDV item length {item_length} does not fit its P-DATA-TF PDU")
            remaining -= 4 + item_length
            fragment_length = item_length - 2
            if context_id not in self._contexts:
                raise ProtocolError(f"PDV for presentation context {context_id}, not accepted")
            if self._message_context not in (-1, context_id):
                raise ProtocolError("PDVs of one message on two presentation contexts")
            self._message_context = context_id
            last = control & 0x02
            if control & 0x01:  # a command fragment
                if self._command is not None:
                    raise ProtocolError("command fragment while the data set was expected")
                start = len(self._command_parts)
                if start + fragment_length > _MAX_COMMAND_SET:
                    raise ProtocolError(f"command set longer than {_MAX_COMMAND_SET} bytes")
                self._command_parts.extend(bytes(fragment_length))
                pdus.read_into(memoryview(self._command_parts)[start:], deadline)
                if not last:
                    continue
                command = decode_command(bytes(self._command_parts))
                self._command_parts = bytearray()
                if command.has_data_set:
                    self._command = command
                    self._incoming = self._begin_data_set(self._contexts[context_id], command)
                    continue
                self._dispatch(self._contexts[context_id], command, None)
            else:
                pending, incoming = self._command, self._incoming
                if pending is None or incoming is None:
                    raise ProtocolError("data set fragment without a command")
                while fragment_length:
                    piece = self._piece[: min(fragment_length, _READ_PIECE)]
                    pdus.read_into(piece, deadline)
                    incoming.write(piece)
                    fragment_length -= len(piece)
                if not last:
                    continue
                self._command = self._incoming = None
                self._dispatch(self._contexts[context_id], pending, incoming)
            self._message_context = -1

    def _begin_data_set(self, context: PresentationContext, command: Command) -> IncomingDataSet:
        """Where the data set announced by ``command`` goes: a file for a C-STORE, else nowhere."""
        if command.command_field == C_STORE_RQ:
            return self.server.begin_store(self, context, command)
        # answered 0x0211 (unrecognised operation) once its data set has been read
        return IncomingDataSet.refused(0x0211, f"DIMSE command 0x{command.command_field:04X} is not served")

    def _dispatch(self, context: PresentationContext, command: Command, incoming: IncomingDataSet | None) -> None:
        """Answer one DIMSE request (PS3.7 9.1.1 C-STORE, 9.1.5 C-ECHO)."""
        field = command.command_field
        if field == C_STORE_RQ:
            if incoming is None:
                result = status.CANNOT_UNDERSTAND
            else:
                result = self.server.store(self, context, command, incoming)
            response = encode_response(command, result, include_instance=True)
        elif field == C_ECHO_RQ:
            LOGGER.debug("C-ECHO from %r", self.calling_ae)
            response = encode_response(command, status.SUCCESS, include_instance=False)
        elif field == C_CANCEL_RQ or field & RESPONSE_BIT:
            return  # C-CANCEL has no response; a response sent to us answers nothing
        else:
            LOGGER.warning("unsupported DIMSE command 0x%04X from %r", field, self.calling_ae)
            response = encode_response(command, 0x0211, include_instance=False)  # unrecognised operation
        self._pdus.send(encode_p_data(context.context_id, response, command=True, peer_max_pdu=self._peer_max_pdu))

    # -- endings ---------------------------------------------------------------------------

    def _release(self) -> None:
        """A-RELEASE-RQ: free the slot and report before answering, so the peer sees both done."""
        LOGGER.info("association with %r at %s released", self.calling_ae, self.peer_address)
        self._ended("released", None)
        self._send_last(encode_release_rp())

    def _abort(self, source: int, reason: int, why: str) -> None:
        self._ended("aborted", why)
        self._send_last(encode_abort(source, reason))

    def _free_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.server.leave()

    def _ended(self, kind: Literal["released", "aborted"], reason: str | None) -> None:
        # the slot first: whoever hears of the end may associate again at once
        self._free_slot()
        if self.established:
            self.established = False
            self.server.report(kind, self, reason)

    def _send_last(self, pdu: bytes) -> None:
        """Send A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT, then wait for the peer to close (Sta13, PS3.8 9.2).

        The requestor closes the connection once it has read that PDU; closing
        first can make it see the end of the connection before the PDU (pynetdicom
        then misses a rejection). Whatever arrives meanwhile is ignored; the wait
        ends after the ACSE timeout (ARTIM) at most.
        """
        try:
            self._pdus.send(pdu)
            self.sock.settimeout(self.server.acse_timeout)
            while self.sock.recv(65536):
                pass
        except OSError as exc:  # gone already, or ARTIM expired: nothing more to tell it
            LOGGER.debug("connection with %s:%d ends: %s", self.peer_address, self.peer_port, exc)
