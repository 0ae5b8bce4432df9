"""DICOM networking for the node: a C-ECHO/C-STORE SCP and a C-ECHO/C-STORE SCU.

Both ends run our own DICOM upper layer on blocking sockets
(:mod:`dimse.upper_layer`, PS3.8) and encode DIMSE command sets by hand
(:mod:`dimse.commands`, PS3.7): the SCP accepts connections and reads their
A-ASSOCIATE-RQs in one selector thread (:mod:`dimse._negotiator`), serves each
admitted association in its own thread (:mod:`dimse._association`) and writes
each received data set to a file as it arrives (:mod:`dimse._incoming`,
:func:`~dimse.scp.spool_part10` for other intakes); the SCU sends from the
calling thread (:mod:`dimse.scu`, :mod:`dimse.requestor`). pynetdicom is used
only for its tables (storage SOP classes) and pydicom, when a peer refuses a
file's own syntax, to re-encode it. Of the rest of the node it
imports only :mod:`core`: the status codes (:mod:`core.status`) and the file
reader (:mod:`core.dicomfile`). :data:`~dimse.negotiation.NEGOTIATION` holds the tables both
ends negotiate with (for the conformance statement). Its own exceptions share one base,
:class:`~dimse.errors.DimseError` (the tree is in :mod:`dimse.errors`).
"""

from dimse.commands import encode_file_meta
from dimse.errors import DimseError
from dimse.negotiation import NEGOTIATION
from dimse.scp import (
    ACCEPTED_TRANSFER_SYNTAXES,
    AllowedPeer,
    AssociationEvent,
    StorageSCP,
    StoreRequest,
    StoreSink,
    spool_part10,
)
from dimse.scu import AssociationFailed, StoreOutcome, echo, store_files

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "NEGOTIATION",
    "AllowedPeer",
    "AssociationEvent",
    "AssociationFailed",
    "DimseError",
    "StorageSCP",
    "StoreOutcome",
    "StoreRequest",
    "StoreSink",
    "echo",
    "encode_file_meta",
    "spool_part10",
    "store_files",
]
