"""Connections between ``accept()`` and a complete A-ASSOCIATE-RQ, all served by the listener's one thread.

PS3.8 9.2 state Sta2 (transport connection open, waiting for the
A-ASSOCIATE-RQ) costs a thread per connection when served with blocking reads,
and a peer that opens connections and trickles bytes into them can then hold
every thread and connection slot the server has: C-ECHO of a good peer was
locked out for as long as 130 such connections trickled. Here a single
selector loop (:class:`Negotiator`, run by :class:`dimse.scp.StorageSCP`'s
listener thread) accepts connections, runs their TLS handshakes and reads
their A-ASSOCIATE-RQ without blocking; only a request that is complete, parsed
and admitted gets a thread (:class:`dimse._association.Association`), so
threads are bounded by ``max_associations``.

* **A real deadline.** Each connection must complete its TLS handshake and
  its whole A-ASSOCIATE-RQ within ``request_timeout`` seconds of being
  accepted; reads do not extend it. Past it the connection is closed (ARTIM
  expiry, PS3.8 9.1.5).
* **Caps.** At most ``max_negotiating`` connections negotiate at once, and
  ``max_per_address`` from one address. A connection over a cap is answered
  A-ASSOCIATE-RJ rejected-transient / service-provider (presentation) /
  local-limit-exceeded (PS3.8 9.3.4) -- unless another connection should
  rather give its place, which then gets the rejection: at the total cap, the
  oldest connection of the address holding the most negotiating connections,
  if that is more than the newcomer's address holds (a peer is never kept out
  by addresses holding more than it does, however many they are); at either
  cap, the oldest connection in the way if it has been negotiating for longer
  than :data:`EVICTION_AGE` (a well-behaved requestor sends its request within
  milliseconds). Established associations never count against these caps.
* **Checks before reading.** The first PDU's type is checked as soon as its
  6-byte header arrives: anything but an A-ASSOCIATE-RQ is answered A-ABORT
  (unexpected or unrecognised PDU) without reading its body, an A-ABORT just
  closes, a request longer than :data:`MAX_ASSOCIATE_RQ` is aborted, and the
  body buffer grows as bytes arrive, never from the length field.
* **Closing without a reset.** A connection given an A-ASSOCIATE-RJ or
  A-ABORT is kept open until the peer closes it or ``linger_timeout`` (the
  ACSE timeout) passes, reading and dropping whatever it sends (PS3.8 Sta13),
  so the peer reads the answer instead of a TCP reset; at most
  :data:`MAX_LINGERING` such connections are kept, the oldest closed first.
  Over TLS a connection rejected before its handshake is simply closed (an
  answer would need the handshake the cap is there to refuse).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dimse.errors import ProtocolError
from dimse.upper_layer import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_SOURCE_PROVIDER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    KNOWN_PDU_TYPES,
    AssociateRequest,
    encode_abort,
    encode_associate_rj,
    parse_associate_rq,
)

__all__ = ["EVICTION_AGE", "MAX_ASSOCIATE_RQ", "MAX_LINGERING", "LOCAL_LIMIT_EXCEEDED", "Negotiator", "Rejection"]

LOGGER = logging.getLogger("ainode.dimse.scp")

#: Seconds a connection may negotiate before a newcomer at a cap takes its place (capped at half the deadline).
EVICTION_AGE = 1.0
#: Longest A-ASSOCIATE-RQ body accepted: 128 contexts of 13 transfer syntaxes with 64-character UIDs
#: (~125 kB) and a 64 kB user identity item fit.
MAX_ASSOCIATE_RQ = 1 << 19
#: Connections kept open after an A-ASSOCIATE-RJ or A-ABORT, waiting for the peer to close.
MAX_LINGERING = 256
#: Seconds an A-ASSOCIATE-RJ waits before it is sent: pynetdicom requestors (our SCU included) check
#: their connection is still open *after* sending the A-ASSOCIATE-RQ, and report a rejection that
#: arrived and closed it first as an abort.
REJECT_DELAY = 0.05
_ACCEPTS_PER_WAKE = 64
#: Reads of a lingering connection per wake-up: a peer that keeps sending cannot hold the loop.
_DRAINS_PER_WAKE = 16
_READ_CHUNK = 1 << 16
_HEADER_SIZE = 6


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 9.3.4, Table 9-21), with the reason in words for the log."""

    result: int
    source: int
    reason: int
    text: str


#: Rejected-transient, service-provider (presentation), local-limit-exceeded.
LOCAL_LIMIT_EXCEEDED = Rejection(0x02, 0x03, 0x02, "local-limit-exceeded")


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: tuple[str, int]
    accepted_at: float
    deadline: float
    tls: bool
    handshaken: bool
    header: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    length: int = -1  # the body length, once the header is read
    # lingering (after an A-ASSOCIATE-RJ or A-ABORT)
    outgoing: bytes = b""
    send_at: float = 0.0

    @property
    def host(self) -> str:
        return str(self.address[0])

    def where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class Negotiator:
    """The listener's selector loop: accept, TLS handshake, read and admit A-ASSOCIATE-RQs (see the module).

    Parameters
    ----------
    listener : socket.socket
        The bound, listening socket; made non-blocking here.
    ssl_context : ssl.SSLContext or None
        Server-side TLS for every accepted connection.
    request_timeout : float
        Seconds from accept to the end of the A-ASSOCIATE-RQ (TLS handshake included).
    linger_timeout : float
        Seconds a rejected or aborted connection waits for the peer to close (ARTIM).
    max_negotiating, max_per_address : int
        The caps on connections negotiating at once, in total and from one address.
    admit : callable
        ``admit(request, address)``: the :class:`Rejection` to send, or ``None``
        when the association is accepted (it then holds a ``max_associations`` slot).
    rejected : callable
        ``rejected(request, address, rejection)``: report a rejection (must not block long).
    start : callable
        ``start(sock, address, request)``: serve an admitted association; takes the socket.
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        request_timeout: float,
        linger_timeout: float,
        max_negotiating: int,
        max_per_address: int,
        admit: Callable[[AssociateRequest, str], Rejection | None],
        rejected: Callable[[AssociateRequest, str, Rejection], None],
        start: Callable[[socket.socket, tuple[str, int], AssociateRequest], None],
    ) -> None:
        self._listener = listener
        self._ssl_context = ssl_context
        self._request_timeout = request_timeout
        self._linger_timeout = linger_timeout
        self._max_negotiating = max_negotiating
        self._max_per_address = max_per_address
        self._eviction_age = min(EVICTION_AGE, request_timeout / 2)
        self._admit = admit
        self._rejected = rejected
        self._start = start
        self._selector = selectors.DefaultSelector()
        self._negotiating: dict[socket.socket, _Connection] = {}  # in accept order (dicts keep it)
        self._per_address: Counter[str] = Counter()  # only addresses with a negotiating connection
        self._lingering: dict[socket.socket, _Connection] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._accept_paused_until = 0.0
        self._scratch = bytearray(_READ_CHUNK)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`; never raises (a failure costs the connection it happened on)."""
        listener = self._listener
        listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                events = self._selector.select(self._next_wake())
                now = time.monotonic()
                for key, mask in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if sock is listener:
                            self._accept(now)
                        elif sock is self._wake_r:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(64)
                        else:
                            self._on_ready(sock, mask, now)
                    except Exception:  # a bug here must cost one connection, not the listener
                        LOGGER.exception("negotiation failed on %s", sock)
                        self._drop(sock)
                try:
                    self._on_time(time.monotonic())
                except Exception:
                    LOGGER.exception("negotiation timers failed")
        finally:
            for connection in [*self._negotiating.values(), *self._lingering.values()]:
                self._close(connection)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        """Make :meth:`run` return (from another thread); its connections not yet associated are closed."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def counts(self) -> tuple[int, int]:
        """Connections negotiating and lingering right now (for tests and logs)."""
        return len(self._negotiating), len(self._lingering)

    def _next_wake(self) -> float:
        times = [c.deadline for c in self._negotiating.values()]
        times += [c.send_at if c.outgoing else c.deadline for c in self._lingering.values()]
        if self._accept_paused_until:
            times.append(self._accept_paused_until)
        if not times:
            return 5.0
        return max(0.0, min(times) - time.monotonic())

    def _on_time(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ)
        for connection in [c for c in self._negotiating.values() if c.deadline <= now]:
            LOGGER.warning(
                "no complete A-ASSOCIATE-RQ from %s within %s s of connecting: closing",
                connection.where(),
                self._request_timeout,
            )
            self._forget(connection)
            self._close(connection)
        for connection in list(self._lingering.values()):
            if connection.outgoing and connection.send_at <= now:
                self._send_answer(connection)
            elif not connection.outgoing and connection.deadline <= now:
                self._close(connection)

    # -- accepting ------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: stop accepting for a moment instead of spinning on a ready listener
                    LOGGER.error("accept() failed: %s; pausing accepts for 0.1 s", exc)
                    self._selector.unregister(self._listener)
                    self._accept_paused_until = now + 0.1
                    return
                LOGGER.warning("accept() failed: %s", exc)
                continue
            self._admit_connection(sock, (str(address[0]), int(address[1])), now)

    def _admit_connection(self, sock: socket.socket, address: tuple[str, int], now: float) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as exc:
            LOGGER.warning("dropping connection from %s: %s", address[0], exc)
            sock.close()
            return
        tls = self._ssl_context is not None
        connection = _Connection(sock, address, now, now + self._request_timeout, tls=tls, handshaken=not tls)
        host = connection.host
        if self._per_address[host] >= self._max_per_address and not self._evict_oldest(now, host):
            self._refuse(connection, f"{self._max_per_address} connections from {host} already negotiating")
            return
        if len(self._negotiating) >= self._max_negotiating and not self._evict_for(host, now):
            self._refuse(connection, f"{self._max_negotiating} connections already negotiating")
            return
        self._negotiating[sock] = connection
        self._per_address[host] += 1
        self._selector.register(sock, selectors.EVENT_READ)
        if tls:
            self._progress(connection, now)  # the ClientHello may be there already

    def _evict_for(self, host: str, now: float) -> bool:
        """Make room under the total cap for a connection from ``host``; False when it must be refused.

        Fair share first: if another address holds more negotiating connections
        than ``host``, its oldest one goes (so a peer is never kept out by
        addresses that hold more than it does, however many they are); else the
        oldest of all, if older than the eviction age.
        """
        busiest, held = max(self._per_address.items(), key=lambda item: item[1])
        if self._per_address[host] < held:
            oldest = next(c for c in self._negotiating.values() if c.host == busiest)
            LOGGER.warning(
                "connection from %s gives its place to one from %s (%d connections from %s negotiating)",
                oldest.where(),
                host,
                held,
                busiest,
            )
            self._forget(oldest)
            self._refuse(oldest, "its address holds the most connections while the negotiation cap is reached")
            return True
        return self._evict_oldest(now, None)

    def _evict_oldest(self, now: float, host: str | None) -> bool:
        """Reject the oldest negotiating connection (of ``host``) if it is older than the eviction age."""
        oldest = next((c for c in self._negotiating.values() if host is None or c.host == host), None)
        if oldest is None or now - oldest.accepted_at < self._eviction_age:
            return False
        LOGGER.warning(
            "connection from %s still negotiating after %.1f s gives its place to a new one",
            oldest.where(),
            now - oldest.accepted_at,
        )
        self._forget(oldest)
        self._refuse(oldest, "negotiating too long while the negotiation cap is reached")
        return True

    def _refuse(self, connection: _Connection, why: str) -> None:
        """A transient A-ASSOCIATE-RJ, local-limit-exceeded, for a connection over a cap."""
        LOGGER.warning("rejecting connection from %s: %s (local-limit-exceeded)", connection.where(), why)
        if connection.tls and not connection.handshaken:
            self._close(connection)
            return
        rejection = LOCAL_LIMIT_EXCEEDED
        self._linger(connection, encode_associate_rj(rejection.result, rejection.source, rejection.reason), delay=False)

    # -- negotiating ------------------------------------------------------------------------------

    def _on_ready(self, sock: socket.socket, mask: int, now: float) -> None:
        connection = self._negotiating.get(sock)
        if connection is not None:
            self._progress(connection, now)
            return
        connection = self._lingering.get(sock)
        if connection is not None:
            self._drain(connection)

    def _progress(self, connection: _Connection, now: float) -> None:
        """Advance the handshake and the read of the A-ASSOCIATE-RQ as far as the bytes received allow."""
        sock = connection.sock
        try:
            if not connection.handshaken:
                assert isinstance(sock, ssl.SSLSocket)
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    self._selector.modify(sock, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self._selector.modify(sock, selectors.EVENT_WRITE)
                    return
                connection.handshaken = True
                self._selector.modify(sock, selectors.EVENT_READ)
            complete = self._read_request(connection)
        except (ssl.SSLError, OSError) as exc:
            what = "TLS handshake" if not connection.handshaken else "connection"
            LOGGER.warning("%s with %s failed: %s", what, connection.where(), exc)
            self._forget(connection)
            self._close(connection)
            return
        except ProtocolError as exc:
            LOGGER.warning("invalid A-ASSOCIATE-RQ from %s: %s", connection.where(), exc)
            self._forget(connection)
            self._linger(connection, encode_abort(ABORT_SOURCE_PROVIDER, exc.reason), delay=False)
            return
        except _PeerClosed:
            self._forget(connection)
            self._close(connection)
            return
        except _PeerAborted:
            self._forget(connection)
            self._close(connection)
            return
        if complete:
            self._forget(connection)
            self._complete(connection)

    def _recv(self, connection: _Connection, wanted: int) -> bytes | None:
        """Up to ``wanted`` bytes now, ``None`` when none are there yet."""
        try:
            data = connection.sock.recv(min(wanted, _READ_CHUNK))
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        except ssl.SSLWantWriteError:  # renegotiation is off in TLS 1.3; wait for writability
            self._selector.modify(connection.sock, selectors.EVENT_WRITE)
            return None
        except ssl.SSLZeroReturnError as exc:
            raise _PeerClosed from exc
        if not data:
            raise _PeerClosed
        return data

    def _read_request(self, connection: _Connection) -> bool:
        """Read what has arrived of the A-ASSOCIATE-RQ; True once it is complete.

        Raises
        ------
        ProtocolError
            The first PDU is not an A-ASSOCIATE-RQ, or too long; raised on its header.
        _PeerClosed, _PeerAborted
            The peer closed the connection, or sent an A-ABORT.
        """
        while connection.length < 0:
            data = self._recv(connection, _HEADER_SIZE - len(connection.header))
            if data is None:
                return False
            connection.header += data
            if len(connection.header) < _HEADER_SIZE:
                continue
            pdu_type = connection.header[0]
            length = int.from_bytes(connection.header[2:6], "big")
            if pdu_type == A_ABORT:
                LOGGER.info("connection from %s aborted before its A-ASSOCIATE-RQ", connection.where())
                raise _PeerAborted
            if pdu_type != A_ASSOCIATE_RQ:
                if pdu_type in KNOWN_PDU_TYPES:
                    raise ProtocolError(
                        f"PDU type 0x{pdu_type:02X} ({length} bytes) before an A-ASSOCIATE-RQ", ABORT_UNEXPECTED_PDU
                    )
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
            if length > MAX_ASSOCIATE_RQ:
                raise ProtocolError(
                    f"A-ASSOCIATE-RQ of {length} bytes, over {MAX_ASSOCIATE_RQ}", ABORT_INVALID_PARAMETER
                )
            connection.length = length
        while len(connection.body) < connection.length:
            data = self._recv(connection, connection.length - len(connection.body))
            if data is None:
                return False
            connection.body += data
        return True

    def _complete(self, connection: _Connection) -> None:
        """A whole A-ASSOCIATE-RQ: parse, admit, then start the association or reject it."""
        try:
            request = parse_associate_rq(connection.body)
        except ProtocolError as exc:
            LOGGER.warning("invalid A-ASSOCIATE-RQ from %s: %s", connection.where(), exc)
            self._linger(connection, encode_abort(ABORT_SOURCE_PROVIDER, exc.reason), delay=False)
            return
        connection.body = bytearray()
        host = connection.host
        rejection = self._admit(request, host)
        if rejection is not None:
            LOGGER.warning(
                "rejecting association from %r at %s calling %r: %s",
                request.calling_ae,
                connection.where(),
                request.called_ae,
                rejection.text,
            )
            self._rejected(request, host, rejection)
            self._linger(
                connection, encode_associate_rj(rejection.result, rejection.source, rejection.reason), delay=True
            )
            return
        sock = connection.sock
        try:
            sock.setblocking(True)
        except OSError as exc:
            LOGGER.warning("connection from %s lost: %s", connection.where(), exc)
        self._start(sock, connection.address, request)

    def _forget(self, connection: _Connection) -> None:
        """Take a connection out of the negotiating ones (and their caps)."""
        if self._negotiating.pop(connection.sock, None) is None:
            return
        host = connection.host
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)

    # -- answering and closing (PS3.8 Sta13) ------------------------------------------------------

    def _linger(self, connection: _Connection, pdu: bytes, *, delay: bool) -> None:
        """Send ``pdu`` (after :data:`REJECT_DELAY` when ``delay``), then wait for the peer to close."""
        if len(self._lingering) >= MAX_LINGERING:
            oldest = next(iter(self._lingering.values()))
            self._close(oldest)
        connection.outgoing = pdu
        connection.send_at = time.monotonic() + (REJECT_DELAY if delay else 0.0)
        connection.deadline = connection.send_at + self._linger_timeout
        self._lingering[connection.sock] = connection
        try:
            self._selector.register(connection.sock, selectors.EVENT_READ)
        except (KeyError, ValueError, OSError):
            self._close(connection)
            return
        if not delay:
            self._send_answer(connection)

    def _send_answer(self, connection: _Connection) -> None:
        pdu, connection.outgoing = connection.outgoing, b""
        try:
            sent = connection.sock.send(pdu)
        except (OSError, ssl.SSLError) as exc:
            LOGGER.debug("connection with %s ends: %s", connection.where(), exc)
            self._close(connection)
            return
        if sent < len(pdu):  # a 10-byte answer to a socket with a full send buffer: not worth waiting for
            self._close(connection)

    def _drain(self, connection: _Connection) -> None:
        """Read and drop what a lingering peer sends; close when it closes."""
        sock = connection.sock
        try:
            for _ in range(_DRAINS_PER_WAKE):
                count = sock.recv_into(self._scratch)
                if count == 0:
                    self._close(connection)
                    return
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError):
            self._close(connection)

    def _drop(self, sock: socket.socket) -> None:
        connection = self._negotiating.get(sock) or self._lingering.get(sock)
        if connection is not None:
            self._forget(connection)
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        self._lingering.pop(connection.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        with contextlib.suppress(OSError):
            connection.sock.close()


class _PeerClosed(Exception):
    """The peer closed the connection before its A-ASSOCIATE-RQ was complete."""


class _PeerAborted(Exception):
    """The peer sent an A-ABORT before its A-ASSOCIATE-RQ."""
