"""SOP classes of the objects the node writes and refuses to route, in one table.

The node writes Comprehensive/Enhanced SR, Key Object Selection (KOS),
Segmentation, Grayscale Softcopy Presentation State and Secondary Capture
objects. :func:`result_kind` names such an object's kind (the ``kind`` of its
``Result`` row); :func:`is_result_object` says whether a SOP class is a result
object (PS3.4 Annex B.5: every SR and KOS, every presentation state, every
segmentation), which the router never routes (loop prevention).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "KEY_OBJECT_SELECTION",
    "KIND_BY_SOP_CLASS",
    "RESULT_KINDS",
    "SEGMENTATION_CLASSES",
    "WRITTEN_SOP_CLASSES",
    "is_result_object",
    "result_kind",
]

#: Key Object Selection Document Storage; inside the SR range (…88.x) but its own kind.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

#: Segmentation, Surface Segmentation, Tractography Results, Label Map Segmentation Storage.
SEGMENTATION_CLASSES = frozenset("1.2.840.10008.5.1.4.1.1.66." + suffix for suffix in ("4", "5", "7", "8"))

#: (SOP class UID, or a prefix ending in ``"."`` for a range, kind), first match wins.
KIND_BY_SOP_CLASS: tuple[tuple[str, str], ...] = (
    (KEY_OBJECT_SELECTION, "KO"),
    ("1.2.840.10008.5.1.4.1.1.88.", "SR"),
    *((uid, "SEG") for uid in sorted(SEGMENTATION_CLASSES)),
    ("1.2.840.10008.5.1.4.1.1.11.", "PR"),
    ("1.2.840.10008.5.1.4.1.1.7", "SC"),
    ("1.2.840.10008.5.1.4.1.1.7.", "SC"),
)

#: SOP classes of the objects the node's writers (``sr_writer``) make, by writer module: the
#: conformance statement's "created SOP instances" (``ainode conformance``) and the Storage SCU's
#: SOP classes for results; ``tests/node/test_conformance.py`` checks them against the writers' output.
WRITTEN_SOP_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "sr": "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage (TID 1500)
        "ct_sr": "1.2.840.10008.5.1.4.1.1.88.34",
        "gsps": "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
        "slice_labels": "1.2.840.10008.5.1.4.1.1.11.1",
        "sc": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "kos": KEY_OBJECT_SELECTION,
        "seg": "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    }
)

#: Kinds that are result objects (never routed); Secondary Capture is an image and may be routed.
RESULT_KINDS = frozenset({"SR", "KO", "SEG", "PR"})


def result_kind(sop_class_uid: str) -> str:
    """The kind of an object by its SOP class: SR, KO, SEG, PR, SC, or OT for any other."""
    for uid, kind in KIND_BY_SOP_CLASS:
        if sop_class_uid == uid or (uid.endswith(".") and sop_class_uid.startswith(uid)):
            return kind
    return "OT"


def is_result_object(sop_class_uid: str) -> bool:
    """True for SR, KOS, presentation state and segmentation SOP classes (PS3.4 Annex B.5)."""
    return result_kind(sop_class_uid) in RESULT_KINDS
