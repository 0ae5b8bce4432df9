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


def is_store_success(status: int) -> bool:
    """True for C-STORE success or warning (0x0000, 0xB0xx; PS3.4 B.2.3)."""
    return status == SUCCESS or 0xB000 <= status <= 0xB0FF


def describe(status: int) -> str:
    """Human-readable text for a status code (hex code if unknown)."""
    return DESCRIPTIONS.get(status, f"status 0x{status:04X}")
