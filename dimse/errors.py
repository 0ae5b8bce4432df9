"""The exceptions of :mod:`dimse`: one tree, so that a caller can catch every DIMSE failure at once.

::

    Exception
     +-- DimseError                 base of every error raised by dimse
          +-- AssociationFailed     (dimse.scu, public) the SCU could not establish an association, or
          |                         lost it; .reason, .permanent (rejected-permanent), .outcomes
          +-- AssociationError      (dimse.requestor) the same, inside the SCU, before it is worded for
          |                         the caller and given the outcomes so far
          +-- ProtocolError         the peer broke the upper layer protocol (PS3.8); .reason is the
          |                         A-ABORT reason the association is aborted with (PS3.8 Table 9-26)
          +-- ProtocolViolation     a DIMSE command set that cannot be decoded (PS3.7 6.3.1)
          +-- ConnectionClosed      the peer closed the TCP (or TLS) connection

``AssociationFailed`` is defined in :mod:`dimse.scu` beside the
:class:`~dimse.scu.StoreOutcome` it carries; the others here. The public
interface raises only ``AssociationFailed``: the SCP answers a peer's errors
on the wire (A-ABORT, a failure status) and they never reach its owner, whose
only exceptions come from :class:`~dimse.scp.StorageSCP` itself (``ValueError``
or ``TypeError`` for a bad argument, ``OSError`` when the port cannot be bound).

Lower-layer errors are mapped once, where they happen, with ``raise ... from
exc``: :mod:`dimse.requestor` maps a refused connection, a failed TLS
handshake (``OSError``, ``ssl.SSLError``) and a lost association to
``AssociationError``, which :mod:`dimse.scu` maps to ``AssociationFailed``;
:class:`dimse.upper_layer.PDUSocket` maps the end of a TLS connection
(``ssl.SSLZeroReturnError``) to ``ConnectionClosed``. A file the SCU cannot
read (``core.errors.UnreadableDicom``) is not an exception of the caller's:
that instance's outcome carries a failure status.
"""

from __future__ import annotations

__all__ = ["AssociationError", "ConnectionClosed", "DimseError", "ProtocolError", "ProtocolViolation"]

#: A-ABORT reason "invalid-PDU-parameter value" (PS3.8 Table 9-26), the default reason of a ProtocolError;
#: the same value as :data:`dimse.upper_layer.ABORT_INVALID_PARAMETER`, which imports this module.
_INVALID_PDU_PARAMETER = 0x06


class DimseError(Exception):
    """Base of the errors raised by :mod:`dimse`."""


class AssociationError(DimseError):
    """The association could not be established, or broke while in use.

    Parameters
    ----------
    reason : str
        What happened, in words, naming the peer.
    permanent : bool, optional
        ``True`` for an A-ASSOCIATE-RJ "rejected-permanent" (PS3.8 9.3.4).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class ProtocolError(DimseError):
    """The peer broke PS3.8; the association is aborted with ``reason`` (PS3.8 Table 9-26)."""

    def __init__(self, message: str, reason: int = _INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolViolation(DimseError):
    """A command set that cannot be decoded (PS3.7 6.3.1)."""


class ConnectionClosed(DimseError):
    """The peer closed the TCP connection."""
