"""One accepted association of :class:`dimse.scp.StorageSCP`, served by its own thread.

The association knows its server only through :class:`Server`, defined here:
the settings it negotiates and times out with and five calls (admit, leave,
report, store, closed). The SCP builds one for each connection it accepts, so
this module never imports :mod:`dimse.scp`.

The thread blocks on the socket for whole PDUs and walks the acceptor side of
the PS3.8 9.2 state machine, reduced to what a Storage SCP meets:

* Sta2, transport open: the first PDU must be an A-ASSOCIATE-RQ within the ACSE
  timeout (ARTIM, PS3.8 9.1.5); otherwise the connection is closed, or aborted
  if the peer sent something else.
* A-ASSOCIATE-RQ: access control and the association limit (A-ASSOCIATE-RJ,
  PS3.8 9.3.4), else presentation contexts are negotiated (A-ASSOCIATE-AC).
* Sta6, established: P-DATA-TF fragments are gathered into DIMSE messages
  (PS3.8 Annex E), C-ECHO-RQ and C-STORE-RQ answered (PS3.7 9.1.5, 9.1.1);
  A-RELEASE-RQ is answered with A-RELEASE-RP; A-ABORT ends the association.
* Anything else (an unknown PDU, a PDU out of place, an inconsistent
  fragment) aborts with A-ABORT, source service-provider (PS3.8 Table 9-26);
  so does the network timeout on an idle association.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
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
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    CONTEXT_ACCEPTED,
    KNOWN_PDU_TYPES,
    P_DATA_TF,
    AssociateRequest,
    PDUSocket,
    PresentationContext,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_p_data,
    encode_release_rp,
    iter_pdvs,
    negotiate,
    parse_associate_rq,
)

LOGGER = logging.getLogger("ainode.dimse.scp")

#: Seconds an A-ASSOCIATE-RJ waits before it is sent (see Association._accept).
_REJECT_DELAY = 0.05
#: P-DATA-TF bodies are accepted up to this size even when we advertised less:
#: some senders overshoot, and the only point of a limit is bounding memory.
_DATA_PDU_CEILING = 1 << 24

#: What happened to an association, as :class:`dimse.scp.AssociationEvent` says it.
EventKind = Literal["accepted", "rejected", "released", "aborted"]


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 9.3.4, Table 9-21), with the reason in words for the log."""

    result: int
    source: int
    reason: int
    text: str


@dataclass(frozen=True)
class Server:
    """All an :class:`Association` uses of the server that accepted its connection.

    Settings (see :class:`dimse.scp.StorageSCP` for their meaning): ``max_pdu``
    (0 for unlimited), the three timeouts, ``supported_contexts`` (abstract
    syntax to accepted transfer syntaxes, best first) and the implementation
    class UID and version name sent in the A-ASSOCIATE-AC.

    Calls, each made from the association's thread:

    ``admit(request, peer_address)``
        Access control and the association limit: the :class:`Rejection` to
        send, or ``None`` when the association is accepted, which takes one of
        the ``max_associations`` slots.
    ``leave()``
        Give that slot back; called once, when the accepted association ends.
    ``report(kind, association, reason)``
        An association was accepted, rejected, released or aborted; never raises.
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
    admit: Callable[[AssociateRequest, str], Rejection | None]
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
        The accepted connection (TLS-wrapped, handshake not yet done).
    address : tuple
        The peer's address as returned by ``accept()``.
    """

    def __init__(self, server: Server, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.peer_address = str(address[0])
        self.peer_port = int(address[1])
        self.calling_ae = ""
        #: True between A-ASSOCIATE-AC and the release or abort.
        self.established = False
        self.thread = threading.Thread(
            target=self.run, name=f"dimse-scp-{self.peer_address}:{self.peer_port}", daemon=True
        )
        self._stop_event = threading.Event()  # set by request_stop()
        self._holds_slot = False
        self._peer_max_pdu = 0
        self._contexts: dict[int, PresentationContext] = {}
        # the DIMSE message being received (PS3.8 E.2)
        self._message_context = -1
        self._command: Command | None = None
        self._command_parts: list[memoryview] = []
        self._incoming: IncomingDataSet | None = None  # the data set of self._command
        limit = max(server.max_pdu, _DATA_PDU_CEILING) if server.max_pdu else 0
        self._pdus = PDUSocket(sock, limit)

    # -- thread entry and shutdown ------------------------------------------------------

    def run(self) -> None:
        """Serve the association until it is rejected, released or aborted; never raises."""
        try:
            self._serve()
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

    # -- Sta2: waiting for the A-ASSOCIATE-RQ --------------------------------------------

    def _serve(self) -> None:
        server = self.server
        self.sock.settimeout(server.acse_timeout)
        if isinstance(self.sock, ssl.SSLSocket):
            try:
                self.sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                LOGGER.warning("TLS handshake with %s:%d failed: %s", self.peer_address, self.peer_port, exc)
                return
        try:
            pdu_type, body = self._pdus.read_pdu()
            if pdu_type != A_ASSOCIATE_RQ:
                if pdu_type != A_ABORT:
                    reason = ABORT_UNEXPECTED_PDU if pdu_type in KNOWN_PDU_TYPES else ABORT_UNRECOGNIZED_PDU
                    self._send_last(encode_abort(ABORT_SOURCE_PROVIDER, reason))
                return
            request = parse_associate_rq(body)
        except TimeoutError:
            LOGGER.info(
                "no A-ASSOCIATE-RQ from %s:%d within %s s", self.peer_address, self.peer_port, server.acse_timeout
            )
            return
        except ProtocolError as exc:
            LOGGER.warning("invalid A-ASSOCIATE-RQ from %s:%d: %s", self.peer_address, self.peer_port, exc)
            self._send_last(encode_abort(ABORT_SOURCE_PROVIDER, exc.reason))
            return
        except (ConnectionClosed, OSError):
            return
        if self._accept(request):
            self._serve_established()

    def _accept(self, request: AssociateRequest) -> bool:
        """Answer the A-ASSOCIATE-RQ with -RJ or -AC (PS3.8 9.3.3, 9.3.4); True when accepted."""
        server = self.server
        self.calling_ae = request.calling_ae
        rejection = server.admit(request, self.peer_address)
        if rejection is not None:
            LOGGER.warning(
                "rejecting association from %r at %s:%d calling %r: %s",
                request.calling_ae,
                self.peer_address,
                self.peer_port,
                request.called_ae,
                rejection.text,
            )
            server.report("rejected", self, rejection.text)
            # pynetdicom requestors (our own SCU included) check their connection is still open
            # *after* sending the A-ASSOCIATE-RQ; a rejection that arrived and closed it first is
            # then reported as a failed connection and an abort, not a rejection. A rejection is
            # not worth being fast: give the requestor time to get there.
            self._stop_event.wait(_REJECT_DELAY)
            self._send_last(encode_associate_rj(rejection.result, rejection.source, rejection.reason))
            return False
        self._holds_slot = True
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
        timeout = server.network_timeout
        self.sock.settimeout(timeout)
        while True:
            # network timeout between messages, DIMSE timeout inside one
            in_message = self._command is not None or bool(self._command_parts)
            wanted = server.dimse_timeout if in_message else server.network_timeout
            if wanted != timeout:
                timeout = wanted
                self.sock.settimeout(timeout)
            try:
                if self._stop_event.is_set():
                    raise ConnectionClosed("stop requested")
                pdu_type, body = self._pdus.read_pdu()
                if pdu_type == P_DATA_TF:
                    self._on_p_data(body)
                    continue
                if pdu_type == A_RELEASE_RQ:
                    self._release()
                    return
                if pdu_type == A_ABORT:
                    LOGGER.warning("association with %r at %s aborted by the peer", self.calling_ae, self.peer_address)
                    self._ended("aborted", "aborted by the peer")
                    return
                if pdu_type in KNOWN_PDU_TYPES:
                    raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
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

    def _on_p_data(self, body: bytearray) -> None:
        """Gather the PDVs of one P-DATA-TF into the current message; answer it when complete (PS3.8 E.2).

        A message is its command set's fragments, then, if the command says so,
        its data set's, all on one presentation context.

        Raises
        ------
        ProtocolError, ProtocolViolation
            Fragments out of order, on another context, or an undecodable command.
        """
        for context_id, control, fragment in iter_pdvs(body):
            if context_id not in self._contexts:
                raise ProtocolError(f"PDV for presentation context {context_id}, not accepted")
            if self._message_context not in (-1, context_id):
                raise ProtocolError("PDVs of one message on two presentation contexts")
            self._message_context = context_id
            last = control & 0x02
            if control & 0x01:  # a command fragment
                if self._command is not None:
                    raise ProtocolError("command fragment while the data set was expected")
                self._command_parts.append(fragment)
                if not last:
                    continue
                command = decode_command(b"".join(self._command_parts))
                self._command_parts = []
                if command.has_data_set:
                    self._command = command
                    self._incoming = self._begin_data_set(self._contexts[context_id], command)
                    continue
                self._dispatch(self._contexts[context_id], command, None)
            else:
                pending, incoming = self._command, self._incoming
                if pending is None or incoming is None:
                    raise ProtocolError("data set fragment without a command")
                incoming.write(fragment)
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
