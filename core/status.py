"""DIMSE status codes used by the node, in one table (PS3.4 Annex B.2, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000
#: Refused: out of resources (PS3.4 B.2.3) -- disk full, database unavailable.
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand (unparseable data set, invalid UIDs).
CANNOT_UNDERSTAND = 0xC210
#: Failure: processing failure (anything unexpected; never a crash).
PROCESSING_FAILURE = 0x0110
#: Refused: SOP class not supported (PS3.7 C.5.3). The SCU also reports it for an
#: instance whose presentation context the peer did not accept (never sent).
SOP_CLASS_NOT_SUPPORTED = 0x0122

DESCRIPTIONS: dict[int, str] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP class",
    CANNOT_UNDERSTAND: "Error: cannot understand",
    PROCESSING_FAILURE: "Failure: processing failure",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
}

#: When the node's Storage SCP answers a C-STORE with each status (:mod:`dimse.scp`, :mod:`node.receiver`):
#: the conformance statement's table of C-STORE statuses (``ainode conformance``).
STORE_SCP_CAUSES: dict[int, str] = {
    SUCCESS: "The instance is kept in the node's spool (synced to disk) and will be recorded, routed and analysed.",
    OUT_OF_RESOURCES: "The disk is full, the spool cannot be written, too many instances wait for their database "
    "rows, or the data set is larger than dicom_limits.max_dataset_size. Nothing is kept; the sender may retry.",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "The data set has no SOP Class UID or SOP Instance UID, or its SOP Class "
    "UID is not the C-STORE request's Affected SOP Class UID. Nothing is kept.",
    CANNOT_UNDERSTAND: "The data set cannot be read in the presentation context's transfer syntax, its UIDs "
    "cannot be found, or its SOP Instance UID is not the request's Affected SOP Instance UID. Nothing is kept.",
    PROCESSING_FAILURE: "An unexpected error while keeping the instance (e.g. the database refused its row). "
    "Nothing is kept; the node keeps serving.",
    SOP_CLASS_NOT_SUPPORTED: "The C-STORE's Affected SOP Class UID is not the abstract syntax of the "
    "presentation context it was sent on.",
}


def is_store_success(status: int) -> bool:
    """True for C-STORE success or warning (0x0000, 0xB0xx; PS3.4 B.2.3)."""
    return status == SUCCESS or 0xB000 <= status <= 0xB0FF


def describe(status: int) -> str:
    """Human-readable text for a status code (hex code if unknown)."""
    return DESCRIPTIONS.get(status, f"status 0x{status:04X}")
