"""DICOM networking for the node: a C-ECHO/C-STORE SCP and a C-ECHO/C-STORE SCU.

Both ends run our own DICOM upper layer on blocking sockets
(:mod:`dimse.upper_layer`, PS3.8) and encode DIMSE command sets by hand
(:mod:`dimse.commands`, PS3.7): the SCP serves each association in its own
thread (:mod:`dimse.scp`), the SCU sends from the calling thread
(:mod:`dimse.scu`, :mod:`dimse.requestor`). pynetdicom is used only for its
tables (storage SOP classes, implementation UID) and pydicom to read files and,
when a peer refuses a file's own syntax, to re-encode it. Imports nothing from
the rest of the node. Status codes live in :mod:`core.status`.
"""

from dimse.scp import ACCEPTED_TRANSFER_SYNTAXES, AllowedPeer, AssociationEvent, StorageSCP, StoreRequest, StoreSink
from dimse.scu import AssociationFailed, StoreOutcome, echo, store_files

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "AllowedPeer",
    "AssociationEvent",
    "AssociationFailed",
    "StorageSCP",
    "StoreOutcome",
    "StoreRequest",
    "StoreSink",
    "echo",
    "store_files",
]
