"""What this DICOM layer negotiates, in one public object: the tables the conformance statement prints.

:data:`NEGOTIATION` gathers, without copying them, the tables the SCP (:mod:`dimse.scp`) and the SCU
(:mod:`dimse.scu`, :mod:`dimse.requestor`) act on: the abstract syntaxes the SCP accepts with their
transfer syntaxes, the names of those pynetdicom does not know, the smallest ``max_pdu``, the
application context, and the contexts the SCU proposes. ``ainode conformance``
(:mod:`node.conformance`) reads them from here, so the statement changes when the code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dimse.commands import VERIFICATION_SOP_CLASS
from dimse.requestor import MAX_CONTEXTS
from dimse.scp import EXTRA_STORAGE_SOP_CLASSES, MIN_MAX_PDU, SUPPORTED_CONTEXTS
from dimse.scu import ECHO_TRANSFER_SYNTAXES, FALLBACK_TRANSFER_SYNTAXES
from dimse.upper_layer import DICOM_APPLICATION_CONTEXT

__all__ = ["NEGOTIATION", "Negotiation"]


@dataclass(frozen=True)
class Negotiation:
    """The negotiation tables of the SCP and the SCU (PS3.8 9.3.2, 9.3.3; PS3.7 D.3.3).

    Attributes
    ----------
    application_context : str
        The one application context name proposed and accepted.
    verification_sop_class : str
        Verification's SOP class UID (C-ECHO).
    scp_contexts : Mapping[str, tuple[str, ...]]
        Abstract syntax -> transfer syntaxes the SCP accepts for it (Verification and every storage class).
    scp_extra_sop_class_names : Mapping[str, str]
        Names of the storage classes the SCP accepts that pynetdicom's table lacks (from DCMTK's storescp).
    scp_min_max_pdu : int
        Smallest ``max_pdu`` the SCP can be configured with (0, unlimited, is refused).
    scu_max_contexts : int
        Presentation contexts the SCU proposes in one association at most.
    scu_echo_transfer_syntaxes : tuple[str, ...]
        Transfer syntaxes of the C-ECHO SCU's one Verification context.
    scu_fallback_transfer_syntaxes : tuple[str, ...]
        Offered per SOP class beside a little endian uncompressed file's own syntax (re-encoded losslessly).
    """

    application_context: str
    verification_sop_class: str
    scp_contexts: Mapping[str, tuple[str, ...]]
    scp_extra_sop_class_names: Mapping[str, str]
    scp_min_max_pdu: int
    scu_max_contexts: int
    scu_echo_transfer_syntaxes: tuple[str, ...]
    scu_fallback_transfer_syntaxes: tuple[str, ...]


#: The tables this package acts on.
NEGOTIATION = Negotiation(
    application_context=DICOM_APPLICATION_CONTEXT,
    verification_sop_class=VERIFICATION_SOP_CLASS,
    scp_contexts=SUPPORTED_CONTEXTS,
    scp_extra_sop_class_names=EXTRA_STORAGE_SOP_CLASSES,
    scp_min_max_pdu=MIN_MAX_PDU,
    scu_max_contexts=MAX_CONTEXTS,
    scu_echo_transfer_syntaxes=ECHO_TRANSFER_SYNTAXES,
    scu_fallback_transfer_syntaxes=FALLBACK_TRANSFER_SYNTAXES,
)
