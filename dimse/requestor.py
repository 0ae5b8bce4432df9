"""The requestor side of one association, on a blocking socket, in the caller's thread (PS3.8 9.2).

:class:`Requestor` walks the requestor's half of the PS3.8 9.2 state machine
reduced to what a Storage/Verification SCU needs, one DIMSE operation at a
time (no asynchronous operations window, PS3.7 D.3.3.3):

* Sta4/Sta5: TCP connect (``TCP_NODELAY``; TLS per PS3.15 B.1 when asked),
  A-ASSOCIATE-RQ, then wait for A-ASSOCIATE-AC or -RJ within the timeout
  (ARTIM); anything else, or nothing, aborts.
* Sta6: a request's command set and data set go out as P-DATA-TF PDUs within
  the acceptor's maximum length (PS3.8 9.3.5, Annex E); the caller then blocks
  on the socket for the response's PDUs, with the DIMSE timeout. There is no
  background thread: nobody else can take the response.
* Sta7: A-RELEASE-RQ, then wait for A-RELEASE-RP (PS3.8 9.3.6, 9.3.7); on a release
  collision (the acceptor's A-RELEASE-RQ crosses ours) answer A-RELEASE-RP first, then
  wait for the acceptor's (Sta9, Sta11; PS3.8 9.2.4).
* Any error (timeout, unexpected PDU, undecodable response) sends A-ABORT,
  source service-user (PS3.8 9.3.8), and closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Sequence
from types import TracebackType

from dimse.commands import Response, decode_response
from dimse.errors import AssociationError, ConnectionClosed, ProtocolError, ProtocolViolation
from dimse.upper_layer import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_USER,
    CONTEXT_ACCEPTED,
    P_DATA_TF,
    PDUSocket,
    PresentationContext,
    encode_abort,
    encode_associate_rq,
    encode_p_data_headers,
    encode_release_rp,
    encode_release_rq,
    iter_pdvs,
    parse_associate_ac,
    parse_associate_rj,
)

__all__ = ["AssociationError", "Requestor"]

LOGGER = logging.getLogger("ainode.dimse.scu")

#: Odd presentation context IDs 1..255 (PS3.8 9.3.2.2): at most 128 per association.
MAX_CONTEXTS = 128
#: Fragment size when the acceptor sets no maximum PDU length (0, PS3.8 D.1).
_UNLIMITED_FRAGMENT = 1 << 20
#: Bytes gathered before one ``sendall``: fewer system calls, bounded copies.
_SEND_BATCH = 1 << 20
#: Buffers per ``sendmsg``: well under IOV_MAX (1024 on Linux).
_SEND_BUFFERS = 512
#: Responses longer than this are refused (a C-STORE-RSP is ~200 bytes).
_RESPONSE_PDU_CEILING = 1 << 24


class Requestor:
    """One association we requested; use :meth:`open`, then :meth:`request`, then :meth:`release`.

    A context manager: leaving the ``with`` block on an exception aborts the
    association; otherwise it is released.
    """

    def __init__(
        self, pdus: PDUSocket, contexts: Sequence[PresentationContext], peer_max_pdu: int, where: str, timeout: float
    ) -> None:
        self._pdus = pdus
        self.sock = pdus.sock
        #: The proposed contexts with the acceptor's answers, in proposal order.
        self.contexts = tuple(contexts)
        #: The acceptor's maximum P-DATA-TF length; 0 when unlimited (PS3.8 D.1).
        self.peer_max_pdu = peer_max_pdu
        self.where = where
        self.timeout = timeout
        #: True from A-ASSOCIATE-AC to the release or abort.
        self.established = True

    # -- establishment -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        timeout: float,
        max_pdu: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        implementation_class_uid: str,
        implementation_version_name: str,
    ) -> Requestor:
        """Connect and negotiate an association (PS3.8 7.1, 9.3.2 to 9.3.4).

        Parameters
        ----------
        host, port, called_ae : str, int, str
            The acceptor.
        calling_ae : str
            Our AE title.
        contexts : sequence of (abstract syntax, transfer syntaxes)
            Proposed presentation contexts, IDs 1, 3, 5... in this order; 128 at most.
        timeout : float
            Seconds for the TCP connection, the TLS handshake and the answer.
        max_pdu : int, optional
            Our maximum P-DATA-TF length; ``0`` means unlimited.
        ssl_context : ssl.SSLContext, optional
            Client-side TLS context; the host name is checked when the
            context says so (PS3.15 B.1).
        implementation_class_uid, implementation_version_name : str
            Sent in the user information (PS3.7 D.3.3.2).

        Raises
        ------
        AssociationError
            No connection, a rejection (``permanent`` for rejected-permanent),
            an abort or no answer within ``timeout``.
        """
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(f"{len(contexts)} presentation contexts proposed, at most {MAX_CONTEXTS}")
        where = f"{called_ae}@{host}:{port}"
        proposed = [
            PresentationContext(2 * index + 1, abstract, tuple(syntaxes))
            for index, (abstract, syntaxes) in enumerate(contexts)
        ]
        request = encode_associate_rq(
            called_ae=called_ae,
            calling_ae=calling_ae,
            contexts=proposed,
            max_pdu=max_pdu,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
        )
        sock = _connect(host, port, timeout, ssl_context, where)
        pdus = PDUSocket(sock, max(max_pdu, _RESPONSE_PDU_CEILING))
        try:
            pdus.send(request)
            pdu_type, body = pdus.read_pdu()
            if pdu_type == A_ASSOCIATE_RJ:
                reject = parse_associate_rj(body)
                _close(sock)
                raise AssociationError(f"{where} rejected the association: {reject}", permanent=reject.permanent)
            if pdu_type != A_ASSOCIATE_AC:
                why = "the peer aborted" if pdu_type == A_ABORT else f"unexpected PDU type 0x{pdu_type:02X}"
                raise ProtocolError(why)
            accept = parse_associate_ac(body, proposed)
        except (TimeoutError, ConnectionClosed, ProtocolError, OSError) as exc:
            LOGGER.warning("association with %s not established: %s", where, exc or type(exc).__name__)
            _abort_and_close(sock)
            raise AssociationError(
                f"association with {where} aborted during negotiation (by the peer, or by us after no "
                "answer within the timeout)"
            ) from exc
        accepted = sum(1 for c in accept.contexts if c.result == CONTEXT_ACCEPTED)
        LOGGER.debug("association with %s established (%d of %d presentation contexts)", where, accepted, len(proposed))
        return cls(pdus, accept.contexts, accept.max_pdu, where, timeout)

    # -- DIMSE messages ------------------------------------------------------------------

    def request(
        self, context_id: int, command: bytes, data_set: bytes | memoryview | None, message_id: int
    ) -> Response:
        """Send one DIMSE request and block until its response (PS3.7 7.5, PS3.8 Annex E).

        Parameters
        ----------
        context_id : int
            An accepted presentation context.
        command : bytes
            The encoded request command set.
        data_set : bytes, memoryview or None
            The encoded data set in the context's transfer syntax, if any.
        message_id : int
            The request's Message ID, which the response must echo.

        Raises
        ------
        AssociationError
            The association was aborted (by either side), lost, or no response
            came within the DIMSE timeout; it is closed.
        """
        if not self.established:
            raise AssociationError(f"association with {self.where} is not established")
        try:
            self._send_message(context_id, command, data_set)
            return self._read_response(message_id)
        except TimeoutError as exc:
            raise self._fail(f"no response from {self.where} within {self.timeout} s (DIMSE timeout)") from exc
        except (ConnectionClosed, OSError) as exc:
            raise self._fail(f"association with {self.where} lost: {exc or type(exc).__name__}") from exc
        except (ProtocolError, ProtocolViolation) as exc:
            raise self._fail(f"protocol error from {self.where}: {exc}") from exc

    def _fail(self, reason: str) -> AssociationError:
        """Abort (if still established) and return the error to raise."""
        LOGGER.warning("%s; aborting", reason)
        self.abort()
        return AssociationError(reason)

    def _send_message(self, context_id: int, command: bytes, data_set: bytes | memoryview | None) -> None:
        """Command set then data set, as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2).

        Fragments are sliced from the caller's buffer and written in batches of
        about 1 MB, so a data set takes few system calls; on plain TCP they go
        out by scatter-gather without being copied, through TLS joined once.
        """
        chunk = self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else _UNLIMITED_FRAGMENT
        batch: list[bytes | memoryview] = []
        batched = 0
        parts: list[tuple[bytes | memoryview, int]] = [(command, 0x01)]
        if data_set is not None:
            parts.append((data_set, 0x00))
        for message, kind in parts:
            view = memoryview(message)
            length = len(view)
            for start in range(0, max(length, 1), chunk):
                fragment = view[start : start + chunk]
                control = kind | (0x02 if start + chunk >= length else 0x00)
                batch += (encode_p_data_headers(context_id, control, len(fragment)), fragment)
                batched += len(fragment)
                if batched >= _SEND_BATCH or len(batch) >= _SEND_BUFFERS:
                    self._send_all(batch)
                    batch, batched = [], 0
        if batch:
            self._send_all(batch)

    def _send_all(self, buffers: list[bytes | memoryview]) -> None:
        if isinstance(self.sock, ssl.SSLSocket):  # no sendmsg() through TLS
            self.sock.sendall(b"".join(buffers))
            return
        views = [memoryview(b) for b in buffers]
        while views:
            sent = self.sock.sendmsg(views)  # may send part of it, like send()
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = views[0][sent:]

    def _read_response(self, message_id: int) -> Response:
        """Gather the response's command fragments and decode them (PS3.8 E.2, PS3.7 9.3)."""
        parts: list[memoryview] = []
        while True:
            pdu_type, body = self._pdus.read_pdu()
            if pdu_type == A_ABORT:
                self.established = False
                _close(self.sock)
                raise ConnectionClosed("aborted by the peer")
            if pdu_type != P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} while waiting for a response")
            for _context_id, control, fragment in iter_pdvs(body):
                if not control & 0x01:
                    continue  # a response data set: C-STORE and C-ECHO responses have none
                parts.append(fragment)
                if not control & 0x02:
                    continue
                response = decode_response(b"".join(parts))
                if response.message_id_being_responded_to != message_id:
                    raise ProtocolError(
                        f"response to message {response.message_id_being_responded_to}, expected {message_id}"
                    )
                return response

    # -- endings -------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, wait for A-RELEASE-RP, close (PS3.8 9.3.6, 9.3.7); never raises.

        Without an answer within the timeout the association is aborted.
        """
        if not self.established:
            return
        self.established = False
        try:
            self._pdus.send(encode_release_rq())
            collision = False
            while True:
                pdu_type, _ = self._pdus.read_pdu()
                if pdu_type in (A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:
                    if collision:
                        raise ProtocolError("a second A-RELEASE-RQ during a release collision")
                    # Release collision (PS3.8 9.2.4, Table 9-10): in Sta7 the requestor gets the
                    # acceptor's A-RELEASE-RQ (AR-8, Sta9), answers it first with A-RELEASE-RP (AR-9,
                    # Sta11), then waits for the acceptor's A-RELEASE-RP (AR-3) before closing.
                    LOGGER.debug("release collision with %s: answering its A-RELEASE-RQ", self.where)
                    self._pdus.send(encode_release_rp())
                    collision = True
                # a late P-DATA-TF is of no use any more
        except TimeoutError:
            LOGGER.warning("no A-RELEASE-RP from %s within %s s; aborting", self.where, self.timeout)
            _abort_and_close(self.sock)
            return
        except ProtocolError as exc:  # an unexpected PDU in Sta7 or Sta11 (PS3.8 Table 9-10, AA-8)
            LOGGER.warning("protocol error from %s during release: %s; aborting", self.where, exc)
            _abort_and_close(self.sock)
            return
        except (ConnectionClosed, OSError) as exc:
            LOGGER.debug("association with %s ended during release: %s", self.where, exc)
        _close(self.sock)

    def abort(self) -> None:
        """Send A-ABORT (service-user) and close (PS3.8 9.3.8); never raises."""
        if self.established:
            self.established = False
            _abort_and_close(self.sock)
        else:
            _close(self.sock)

    def __enter__(self) -> Requestor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.release()
        else:
            self.abort()


def _connect(host: str, port: int, timeout: float, ssl_context: ssl.SSLContext | None, where: str) -> socket.socket:
    """A connected socket with ``TCP_NODELAY``, TLS-wrapped (handshake done) if asked."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise AssociationError(
            f"could not associate with {where}: connection refused, unreachable or TLS handshake failed ({exc})"
        ) from exc
    try:
        # Nagle would hold the last P-DATA of each request until the peer's delayed ACK (~40 ms)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            hostname = host if ssl_context.check_hostname else None
            sock = ssl_context.wrap_socket(sock, server_hostname=hostname)
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        _close(sock)
        raise AssociationError(
            f"could not associate with {where}: connection refused, unreachable or TLS handshake failed ({exc})"
        ) from exc
    return sock


def _abort_and_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer is gone: nothing to tell it
        sock.sendall(encode_abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
