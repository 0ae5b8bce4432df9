"""The node's DICOM Conformance Statement (PS3.2), generated from the code's own tables.

``ainode conformance [--output PATH]`` prints :func:`statement`: a Markdown document in the layout
of PS3.2 Annex A (overview, table of contents, introduction, networking, media, character sets,
security, annexes). Nothing in it is a copy of a list kept elsewhere: each table is read from the
module that acts on it:

========================================  ====================================================
what                                      read from
========================================  ====================================================
SCP abstract and transfer syntaxes        :data:`dimse.NEGOTIATION` (the SCP's and the SCU's own tables)
SCU contexts (C-STORE, C-ECHO)            :data:`dimse.NEGOTIATION`
C-STORE statuses and their causes         :mod:`core.status`
implementation class UID and version      :mod:`core.identity`
Query/Retrieve SCU (pull)                 :data:`node.pull.QUERY_RETRIEVE_SOP_CLASSES`
Storage Commitment                        :mod:`node.commitment`
TLS                                       :data:`node.tls.MINIMUM_VERSION`
defaults (AE titles, ports, limits)       :class:`node.settings.Settings` (its defaults, not a site's file)
created objects                           :data:`core.sop.WRITTEN_SOP_CLASSES`, the writers of ``sr_writer``
IOD modules                               highdicom's copy of PS3.3 (the library the writers use)
coded concepts, private schemes           :data:`sr_writer.codes.CONCEPTS`, ``PRIVATE_SCHEMES``
character sets                            :mod:`sr_writer.source_attributes`
========================================  ====================================================

The output is deterministic: sorted tables, no date; the only value that changes between releases
is the package version. ``tests/node/test_conformance.py`` fails when ``docs/conformance.md`` is
not this output, and checks against a running SCP that the SCP tables are what it accepts.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import sop_class
from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from core import status
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, MANUFACTURER, PROJECT_UID_ROOT
from core.sop import WRITTEN_SOP_CLASSES
from dimse import ACCEPTED_TRANSFER_SYNTAXES, NEGOTIATION
from node.commitment import STORAGE_COMMITMENT_INSTANCE
from node.pull import QUERY_RETRIEVE_SOP_CLASSES
from node.settings import DicomDestinationSettings, Settings
from node.tls import MINIMUM_VERSION
from node.web.stow import DICOM_JSON

VERIFICATION_SOP_CLASS = NEGOTIATION.verification_sop_class
SUPPORTED_CONTEXTS = NEGOTIATION.scp_contexts

__all__ = ["SCP_STORAGE_TABLE_TITLE", "SCP_TRANSFER_TABLE_TITLE", "statement"]

#: Titles of the two tables a test reads back (the SCP's storage SOP classes and its transfer syntaxes).
SCP_STORAGE_TABLE_TITLE = "Storage SOP classes accepted (SCP)"
SCP_TRANSFER_TABLE_TITLE = "Transfer syntaxes accepted for every storage SOP class (SCP)"

#: The writers of ``sr_writer`` by module name (the keys of :data:`core.sop.WRITTEN_SOP_CLASSES`),
#: with the constant that holds each one's Series Description.
_SERIES_DESCRIPTION = {
    "sr": ("SERIES_DESCRIPTION",),
    "ct_sr": ("PE_SERIES_DESCRIPTION", "LUMBAR_SERIES_DESCRIPTION"),
    "gsps": ("SERIES_DESCRIPTION",),
    "slice_labels": ("SERIES_DESCRIPTION",),
    "sc": ("SERIES_DESCRIPTION",),
    "kos": ("SERIES_DESCRIPTION",),
    "seg": ("SERIES_DESCRIPTION",),
}

#: pynetdicom's storage SOP classes by UID (keywords such as ``LabelMapSegmentationStorage``), for the UIDs
#: newer than pydicom's dictionary.
_PYNETDICOM_STORAGE_NAMES = {str(uid): keyword for keyword, uid in sop_class._STORAGE_CLASSES.items()}

_ACRONYMS = frozenset({"sop", "lut", "voi", "sr", "ct", "mr", "pet", "rt", "us", "xa", "xrf", "icc", "ai", "dx"})

_USAGE = {"M": "Mandatory", "C": "Conditional", "U": "User option"}


# -- a small Markdown writer with numbered sections and a table of contents ---------------------------


@dataclass
class _Section:
    number: str
    title: str
    lines: list[str] = field(default_factory=list)


class _Document:
    """Sections numbered as PS3.2 numbers them (1, 4.2.1.3...), rendered with a table of contents."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []
        self._counters: list[int] = []
        self._tables = 0

    def section(self, level: int, title: str) -> None:
        del self._counters[level:]
        while len(self._counters) < level:
            self._counters.append(0)
        self._counters[level - 1] += 1
        self.sections.append(_Section(".".join(str(n) for n in self._counters), title))

    def text(self, *paragraphs: str) -> None:
        for paragraph in paragraphs:
            self.sections[-1].lines += [paragraph, ""]

    def bullets(self, items: Iterable[str]) -> None:
        self.sections[-1].lines += [f"- {item}" for item in items] + [""]

    def table(self, title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self._tables += 1
        lines = [f"**Table {self.sections[-1].number}-{self._table_index()}. {title}**", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
        self.sections[-1].lines += [*lines, ""]

    def _table_index(self) -> int:
        return sum(1 for line in self.sections[-1].lines if line.startswith("**Table ")) + 1

    def render(self, title: str, preface: Sequence[str]) -> str:
        out = [f"# {title}", "", *preface]
        for section in self.sections:
            depth = section.number.count(".") + 2
            out += [f"{'#' * min(depth, 6)} {section.number} {section.title}", ""]
            if section.title == "Table of Contents":
                out += [
                    f"{'  ' * s.number.count('.')}- [{s.number} {s.title}](#{_anchor(s.number + ' ' + s.title)})"
                    for s in self.sections
                ] + [""]
            out += section.lines
        return "\n".join(out).rstrip("\n") + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# -- names ------------------------------------------------------------------------------------------


def _uid_name(uid: str) -> str:
    """The standard's name of a UID: pydicom's dictionary, else pynetdicom's storage table, else the SCP's own.

    "SOP Class" is left out; a retired UID says "(Retired)".
    """
    known = UID(uid)
    if known.name != uid:
        name = re.sub(r"( SOP Class)+$", "", known.name)
        return f"{name} (Retired)" if known.is_retired and "Retired" not in name else name
    keyword = _PYNETDICOM_STORAGE_NAMES.get(uid)
    if keyword is not None:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword)
    return NEGOTIATION.scp_extra_sop_class_names.get(uid, uid)


def _hex(code: int) -> str:
    return f"0x{code:04X}"


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _series_offsets() -> list[tuple[str, dict[str, int]]]:
    """Each pipeline's result series offsets (``SERIES_OFFSETS`` of its module), by pipeline name."""
    from node.pipelines import ct_lumbar, ct_pe, cxr

    return [("ct_lumbar", ct_lumbar.SERIES_OFFSETS), ("ct_pe", ct_pe.SERIES_OFFSETS), ("cxr", cxr.SERIES_OFFSETS)]


def _writer(name: str) -> object:
    return importlib.import_module(f"sr_writer.{name}")


def _templates(text: str) -> list[str]:
    return sorted({f"TID {number}" for number in re.findall(r"TID\s+(\d+)", text)}, key=lambda t: int(t.split()[1]))


# -- the statement ----------------------------------------------------------------------------------


def statement(version: str) -> str:
    """The conformance statement of ainode ``version`` as Markdown (PS3.2 Annex A layout).

    Parameters
    ----------
    version : str
        The package version named in the title and the revision history (``ainode --version``).
    """
    defaults = Settings()
    doc = _Document()
    storage_scp = sorted(
        (uid for uid in SUPPORTED_CONTEXTS if uid != VERIFICATION_SOP_CLASS), key=lambda uid: (_uid_name(uid), uid)
    )
    written = sorted(set(WRITTEN_SOP_CLASSES.values()), key=_uid_name)
    _overview(doc, len(storage_scp), written)
    doc.section(1, "Table of Contents")
    _introduction(doc, version)
    _networking(doc, defaults, storage_scp, written)
    doc.section(1, "Media Interchange")
    doc.text(
        "ainode has no Media Storage Application Entity: it neither reads nor writes DICOM media (PS3.10 file-sets)."
    )
    _character_sets(doc)
    _security(doc, defaults)
    _annexes(doc, defaults)
    preface = [
        f"ainode {version}: DICOM AI node. Manufacturer (0008,0070) of every object it writes: `{MANUFACTURER}`.",
        "",
        "This document is generated from the code by `ainode conformance --output docs/conformance.md`; "
        "do not edit it by hand. Its layout follows PS3.2 (2024) Annex A.",
        "",
    ]
    return doc.render("ainode DICOM Conformance Statement", preface)


def _overview(doc: _Document, storage_count: int, written: Sequence[str]) -> None:
    doc.section(1, "Overview")
    doc.text(
        "ainode receives images from modalities and PACS (C-STORE, STOW-RS, or a pull by Query/Retrieve or "
        "DICOMweb), analyses each complete series with the AI pipeline its routing rules name, and sends the "
        "results, new DICOM objects in the source study, to the configured destinations (C-STORE or STOW-RS), "
        "optionally asking them to commit the results (Storage Commitment). It never changes a received image.",
    )
    results = ", ".join(_uid_name(uid) for uid in written)
    rows = [
        ("Transfer", "Verification", "Yes", "Yes"),
        (
            "Transfer",
            f'Storage: {storage_count} storage SOP classes (table "{SCP_STORAGE_TABLE_TITLE}")',
            f"Yes: {results}; pulled images",
            "Yes",
        ),
        ("Query/Retrieve", _uid_name(QUERY_RETRIEVE_SOP_CLASSES["C-FIND"]), "Yes (pull)", "No"),
        ("Query/Retrieve", _uid_name(QUERY_RETRIEVE_SOP_CLASSES["C-MOVE"]), "Yes (pull)", "No"),
        ("Query/Retrieve", _uid_name(QUERY_RETRIEVE_SOP_CLASSES["C-GET"]), "Yes (pull)", "No"),
        ("Workflow Management", _uid_name(StorageCommitmentPushModel), "Yes (option)", "No"),
        ("Web Services", "STOW-RS (PS3.18)", "Yes (results)", "Yes"),
        ("Web Services", "QIDO-RS, WADO-RS (PS3.18)", "Yes (pull)", "No"),
    ]
    doc.table(
        "Network services", ("Category", "SOP classes", "User of service (SCU)", "Provider of service (SCP)"), rows
    )
    doc.text("Media services: none (section 5).")


def _introduction(doc: _Document, version: str) -> None:
    doc.section(1, "Introduction")
    doc.section(2, "Revision History")
    doc.table("Revision history", ("Document version", "Software version", "Note"), [(version, version, "generated")])
    doc.section(2, "Audience")
    doc.text(
        "PACS and modality administrators connecting ainode, and integrators reading its result objects. "
        "The reader is expected to know the DICOM standard and its terms (PS3.7, PS3.8)."
    )
    doc.section(2, "Remarks")
    doc.text(
        "This statement, by itself, does not guarantee interoperability; test each connection. Objects made "
        "by a demonstration model (`ainode models list`) say DEMO in their descriptions and texts."
    )
    doc.section(2, "Definitions, Terms and Abbreviations")
    doc.bullets(
        (
            "AE: Application Entity; AET: its title. SCU/SCP: Service Class User/Provider.",
            "SR: Structured Report; GSPS: Grayscale Softcopy Presentation State; KOS: Key Object Selection; "
            "SEG: Segmentation; SC: Secondary Capture; TID: template ID (PS3.16); CID: context group ID.",
            "Destination: a PACS or archive results are sent to (`destinations:`); source: one studies are "
            "pulled from (`sources:`).",
        )
    )
    doc.section(2, "References")
    doc.bullets(
        (
            "NEMA PS3, Digital Imaging and Communications in Medicine (DICOM), 2024 edition.",
            "IHE Radiology Technical Framework Supplement: AI Results (AIR).",
            "IETF BCP 195 (RFC 9325): recommendations for secure use of TLS.",
        )
    )


def _networking(doc: _Document, defaults: Settings, storage_scp: Sequence[str], written: Sequence[str]) -> None:
    doc.section(1, "Networking")
    doc.section(2, "Implementation Model")
    doc.section(3, "Application Data Flow")
    doc.text(
        f"One Storage AE (default AE title `{defaults.ae_title}`) receives instances, delivers results and "
        "pulls studies; a second AE (default `" + defaults.storage_commitment.ae_title + "`) makes Storage "
        "Commitment requests and receives their reports. Their real-world activities:"
    )
    doc.bullets(
        (
            "**Receive instances**: a remote AE sends images by C-STORE (or checks the node by C-ECHO). Each "
            "instance is kept on disk before success is answered, then recorded; a series is analysed once "
            "no instance has come for its quiet period (`quiet_period`).",
            "**Deliver results**: the objects a pipeline wrote are sent by C-STORE (or STOW-RS) to the "
            "destinations the routing names; failures are retried with back-off and kept as dead letters, "
            "never dropped. `ainode echo` verifies a destination by C-ECHO.",
            "**Request Storage Commitment**: for a destination with `storage_commitment: true`, an N-ACTION "
            "asks it to commit the delivered instances; the N-EVENT-REPORT comes back to the commitment AE.",
            "**Pull a study**: `ainode pull` (or `POST /api/pull`) finds a study at a source by C-FIND and "
            "retrieves its series by C-MOVE (to the node's own Storage AE) or C-GET.",
        )
    )
    doc.section(3, "Functional Definition of AEs")
    doc.text(
        f"**Storage AE** (`ae_title`, default `{defaults.ae_title}`): a Verification and Storage SCP on the "
        f"DICOM port (default {defaults.port}) and, with TLS enabled, on the TLS port (default "
        f"{defaults.tls.port}); a Verification and Storage SCU towards destinations; a Query/Retrieve SCU "
        "towards sources, with the Storage SCP role for C-GET sub-operations. Received instances are "
        "stored exactly as received (never transcoded, never decoded while received).",
        f"**Storage Commitment AE** (`storage_commitment.ae_title`, default "
        f"`{defaults.storage_commitment.ae_title}`, listening on port {defaults.storage_commitment.port}): "
        "the calling AE title of every N-ACTION and the acceptor of the N-EVENT-REPORTs. It runs only "
        "while some destination has storage commitment enabled.",
    )
    doc.section(3, "Sequencing of Real-World Activities")
    doc.text(
        "Results are delivered only after the series they analyse is complete (quiet period) and analysed. "
        "A Storage Commitment request follows a successful C-STORE of the results to that destination; an "
        "instance not committed within `commitment_timeout` "
        f"(default {_commitment_timeout():g} s) is sent again. A pulled instance goes through "
        "the same reception as a pushed one. Results are never routed back into analysis: an object whose "
        f"Manufacturer is `{MANUFACTURER}`, or any SR, KOS, presentation state or segmentation, is not analysed."
    )
    doc.section(2, "AE Specifications")
    _storage_ae(doc, defaults, storage_scp, written)
    _commitment_ae(doc, defaults)
    _web_services(doc, defaults)
    doc.section(2, "Network Interfaces")
    doc.section(3, "Physical Network Interface")
    doc.text("Any interface of the host's operating system; ainode uses the TCP/IP stack (PS3.8).")
    doc.section(3, "Additional Protocols")
    doc.text(
        "IPv4 and IPv6 as the host provides. Host names of destinations and sources are resolved by the "
        "operating system (DNS or hosts file). Accepted sockets use TCP_NODELAY."
    )
    doc.section(3, "IPv4 and IPv6 Support")
    doc.text(
        f"The SCP binds `host` (default `{defaults.host}`); an allowed peer's address is compared with an "
        "IPv4-mapped IPv6 address read as IPv4. No IPv6-specific features are used."
    )
    doc.section(2, "Configuration")
    _configuration(doc, defaults)


def _commitment_timeout() -> float:
    """The default ``commitment_timeout`` of a DICOM destination (the field's default)."""
    return float(DicomDestinationSettings.model_fields["commitment_timeout"].default)


def _storage_ae(doc: _Document, defaults: Settings, storage_scp: Sequence[str], written: Sequence[str]) -> None:
    doc.section(3, "Storage AE")
    doc.section(4, "SOP Classes")
    doc.text(
        "As SCP, the AE accepts Verification and every storage SOP class of the table "
        f'"{SCP_STORAGE_TABLE_TITLE}" (those pynetdicom '
        "knows and those DCMTK's storescp accepts: retired, trial, DICOS and DICONDE classes). "
        "Any other abstract syntax is rejected (abstract syntax not supported)."
    )
    doc.table(
        "SOP classes of the Storage AE",
        ("SOP class", "SOP class UID", "SCU", "SCP"),
        [
            (_uid_name(VERIFICATION_SOP_CLASS), VERIFICATION_SOP_CLASS, "Yes", "Yes"),
            ("Every storage SOP class accepted (SCP)", "", "Yes (results; pulled images)", "Yes"),
            *(
                (_uid_name(uid), uid, "Yes (pull)", "No")
                for uid in (QUERY_RETRIEVE_SOP_CLASSES[op] for op in ("C-FIND", "C-MOVE", "C-GET"))
            ),
        ],
    )
    doc.table(SCP_STORAGE_TABLE_TITLE, ("SOP class", "SOP class UID"), [(_uid_name(uid), uid) for uid in storage_scp])
    doc.section(4, "Association Policies")
    doc.section(5, "General")
    doc.text(
        f"Application context name: `{NEGOTIATION.application_context}` (the only one accepted; another is rejected "
        "permanent, application-context-name-not-supported)."
    )
    doc.table(
        "Maximum PDU size",
        ("Direction", "Value"),
        [
            ("Received by the SCP (advertised in the A-ASSOCIATE-AC)", f"`max_pdu`, default {defaults.max_pdu} bytes"),
            (
                "Accepted range of `max_pdu`",
                f"{NEGOTIATION.scp_min_max_pdu} to {2**32 - 1} bytes (0, unlimited, is refused)",
            ),
            ("Received by the SCU (proposed in the A-ASSOCIATE-RQ)", "0 (unlimited)"),
        ],
    )
    doc.section(5, "Number of Associations")
    limits = defaults.dicom_limits
    doc.table(
        "Number of associations",
        ("Limit", "Setting", "Default"),
        [
            ("Simultaneous associations accepted", "`max_associations`", defaults.max_associations),
            ("Connections still negotiating, in total", "`dicom_limits.max_negotiating`", limits.max_negotiating),
            (
                "Connections still negotiating, from one address",
                "`dicom_limits.max_negotiating_per_address`",
                limits.max_negotiating_per_address,
            ),
            ("Associations initiated at a time by the delivery of results", "-", 1),
        ],
    )
    doc.text(
        "Past a limit, a request is rejected transient, service-provider (presentation), local-limit-exceeded. "
        "Deliveries are sent one destination after the other, the due results of a destination grouped in "
        f"one association (several when they need more than {NEGOTIATION.scu_max_contexts} presentation contexts)."
    )
    doc.section(5, "Asynchronous Nature")
    doc.text(
        "Asynchronous operations are not supported: the Asynchronous Operations Window is not negotiated and "
        "one operation is outstanding at a time on each association."
    )
    doc.section(5, "Implementation Identifying Information")
    doc.table(
        "Implementation identifying information",
        ("Item", "Value"),
        [
            ("Implementation Class UID", IMPLEMENTATION_CLASS_UID),
            ("Implementation Version Name", IMPLEMENTATION_VERSION_NAME),
        ],
    )
    doc.text(
        "Both are sent in every A-ASSOCIATE-RQ and -AC of the node's AEs and written in the File Meta "
        "Information of every file the node writes."
    )
    _initiation(doc, defaults, written)
    _acceptance(doc, defaults)


def _initiation(doc: _Document, defaults: Settings, written: Sequence[str]) -> None:
    doc.section(4, "Association Initiation Policy")
    doc.section(5, "Activity: Deliver Results")
    doc.text(
        "Each file is sent as it is stored: its transfer syntax is read from its File Meta Information and "
        "one presentation context is proposed per SOP class and transfer syntax, offering only that syntax; "
        "for a little endian uncompressed file one more context per SOP class offers the fallback syntaxes. "
        "If the peer accepts the file's own syntax the data set is sent byte for byte; if it accepts only "
        "a fallback, the data set is re-encoded losslessly. Pixel data are never decoded or re-compressed: a "
        "compressed file whose syntax is refused is not sent, and its delivery fails with the reason."
    )
    doc.table(
        "Proposed presentation contexts (C-STORE SCU)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [(f"{_uid_name(uid)} ({uid})", "The file's own syntax (one context)", "SCU", "None") for uid in written]
        + [
            (
                "Any storage SOP class: images `ainode pull` retrieved by C-GET or WADO-RS, handed to the "
                "running node on the same machine",
                "The file's own syntax (one context)",
                "SCU",
                "None",
            ),
            (
                "Same SOP class, little endian uncompressed files only",
                ", ".join(_uid_name(ts) for ts in NEGOTIATION.scu_fallback_transfer_syntaxes),
                "SCU",
                "None",
            ),
        ],
    )
    doc.table(
        "C-STORE response status handling (SCU)",
        ("Status", "Meaning", "Behaviour"),
        [
            ("0x0000, 0xB000-0xB0FF", "Success, warning", "The delivery is done."),
            (
                "Any other",
                "Refused, error or failure",
                "The delivery fails: retried with back-off, a dead letter after `delivery.give_up_after_hours` "
                f"(default {defaults.delivery.give_up_after_hours:g} h); `ainode deliveries retry` sends it again.",
            ),
            (
                _hex(status.SOP_CLASS_NOT_SUPPORTED) + " (local)",
                status.describe(status.SOP_CLASS_NOT_SUPPORTED),
                "Reported for an instance whose presentation context the peer did not accept (never sent).",
            ),
        ],
    )
    doc.section(5, "Activity: Verify a Destination")
    doc.table(
        "Proposed presentation contexts (C-ECHO SCU, `ainode echo`)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [
            (
                _uid_name(VERIFICATION_SOP_CLASS),
                ", ".join(_uid_name(ts) for ts in NEGOTIATION.scu_echo_transfer_syntaxes),
                "SCU",
                "None",
            )
        ],
    )
    doc.section(5, "Activity: Pull a Study")
    doc.text(
        "A `type: dicom` source is queried at STUDY, SERIES and IMAGE level (Study Root) by Accession "
        "Number or Study Instance UID; each series not yet analysed is retrieved by C-MOVE to the Storage "
        "AE's own title (`retrieve: move`, the default) or by C-GET (`retrieve: get`). The calling AE title "
        "is the Storage AE's. pynetdicom performs these associations."
    )
    default_syntaxes = ", ".join(_uid_name(ts) for ts in DEFAULT_TRANSFER_SYNTAXES)
    doc.table(
        "Proposed presentation contexts (Query/Retrieve SCU)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [
            *(
                (f"{_uid_name(uid)} ({uid})", default_syntaxes, "SCU", "None")
                for uid in (QUERY_RETRIEVE_SOP_CLASSES[op] for op in ("C-FIND", "C-MOVE", "C-GET"))
            ),
            (
                "C-GET only: the storage SOP classes the source names for the series (C-FIND at IMAGE level)",
                f'Those of "{SCP_TRANSFER_TABLE_TITLE}"',
                "SCP (SCP/SCU role selection)",
                "None",
            ),
        ],
    )
    doc.text(
        "C-FIND, C-MOVE and C-GET pending statuses (0xFF00, 0xFF01) continue the operation; success ends it; "
        "any other final status, or sub-operations that failed, make the pull fail with the status in its "
        "one-line message and its audit row."
    )


def _acceptance(doc: _Document, defaults: Settings) -> None:
    doc.section(4, "Association Acceptance Policy")
    doc.text(
        "Access control runs before any negotiation: the Called AE Title must be the node's (else rejected "
        "permanent, service-user, called-AE-title-not-recognised) and the Calling AE Title must be in "
        "`allowed_peers`, from the listed address when one is given (else rejected permanent, service-user, "
        "calling-AE-title-not-recognised). **An empty `allowed_peers` rejects everybody.** The default "
        "configuration allows "
        + ", ".join(f"`{p.ae_title}`" + (f" from {p.host}" if p.host else "") for p in defaults.allowed_peers)
        + ".",
        "The transfer syntax of an accepted context is the first one the requestor proposed that the SCP "
        "accepts (the requestor's order is its preference). SCP/SCU role selection items are not answered "
        "(default roles: requestor SCU, acceptor SCP); extended negotiation is ignored.",
    )
    doc.section(5, "Activity: Receive Instances")
    doc.table(
        "Accepted presentation contexts (SCP)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [
            (
                f'Every SOP class of "{SCP_STORAGE_TABLE_TITLE}"',
                f'Those of "{SCP_TRANSFER_TABLE_TITLE}"',
                "SCP",
                "None",
            ),
            (
                f"{_uid_name(VERIFICATION_SOP_CLASS)} ({VERIFICATION_SOP_CLASS})",
                ", ".join(_uid_name(ts) for ts in SUPPORTED_CONTEXTS[VERIFICATION_SOP_CLASS]),
                "SCP",
                "None",
            ),
        ],
    )
    doc.table(
        SCP_TRANSFER_TABLE_TITLE, ("Transfer syntax", "UID"), [(_uid_name(ts), ts) for ts in ACCEPTED_TRANSFER_SYNTAXES]
    )
    doc.text(
        "The SCP's storage level is 2 (Full): every element is kept, the data set stored as received. It "
        "does not check the data set against its IOD; it checks that the data set can be read in the "
        "context's transfer syntax and carries the SOP Class and Instance UIDs of the request. "
        "Digital signatures are kept but not verified. Instances are kept until the retention policy "
        f"removes them: `retention.keep_hours` (default {defaults.retention.keep_hours:g} h) after their series "
        "is analysed and its results delivered, earlier while the free space is under "
        f"`retention.min_free_percent` (default {defaults.retention.min_free_percent:g} %), never while unfinished."
    )
    doc.table(
        "C-STORE response statuses (SCP)",
        ("Status", "Meaning", "When"),
        [(_hex(code), status.describe(code), cause) for code, cause in sorted(status.STORE_SCP_CAUSES.items())],
    )
    doc.text(
        "C-ECHO is answered " + _hex(status.SUCCESS) + ". The peer never sees an exception: an error is "
        "answered with a status and logged (AE titles and UIDs, no patient data)."
    )
    doc.table(
        "Timeouts (SCP)",
        ("Timer", "Setting", "Default (s)"),
        [
            (
                "Accept to end of A-ASSOCIATE-RQ (TLS handshake included)",
                "`dicom_limits.association_request_timeout`",
                f"{defaults.dicom_limits.association_request_timeout:g}",
            ),
            ("ARTIM (release, rejection)", "`dicom_limits.acse_timeout`", f"{defaults.dicom_limits.acse_timeout:g}"),
            ("Idle association", "`dicom_limits.network_timeout`", f"{defaults.dicom_limits.network_timeout:g}"),
            ("Inside one DIMSE message", "`dicom_limits.dimse_timeout`", f"{defaults.dicom_limits.dimse_timeout:g}"),
        ],
    )
    doc.text(
        "A data set larger than `dicom_limits.max_dataset_size` (default "
        f"{defaults.dicom_limits.max_dataset_size} bytes) is read to its end without being kept and answered "
        f"{_hex(status.OUT_OF_RESOURCES)}; the association continues."
    )


def _commitment_ae(doc: _Document, defaults: Settings) -> None:
    commitment = defaults.storage_commitment
    doc.section(3, "Storage Commitment AE")
    doc.section(4, "SOP Classes")
    doc.table(
        "SOP classes of the Storage Commitment AE",
        ("SOP class", "SOP class UID", "SCU", "SCP"),
        [(_uid_name(StorageCommitmentPushModel), str(StorageCommitmentPushModel), "Yes", "No")],
    )
    doc.section(4, "Association Policies")
    doc.text(
        "Built on pynetdicom, with the node's implementation class UID and version name (section 4.2.1.2.4). "
        "Associations are initiated one at a time, by the delivery of results. The AE accepts associations "
        f"on `storage_commitment.port` (default {commitment.port}) from any AE that proposes "
        f"{_uid_name(StorageCommitmentPushModel)}; a report for an unknown transaction is answered success "
        "and ignored."
    )
    doc.section(4, "Association Initiation Policy")
    doc.text(
        "N-ACTION Request Storage Commitment (Action Type ID 1) on the well-known SOP Instance "
        f"`{STORAGE_COMMITMENT_INSTANCE}`, listing the instances delivered under a new Transaction UID. "
        "A refused context or a failure status is a failed delivery attempt (permanent when the destination "
        "does not offer the service)."
    )
    doc.table(
        "Proposed presentation contexts (Storage Commitment SCU)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [
            (
                f"{_uid_name(StorageCommitmentPushModel)} ({StorageCommitmentPushModel})",
                ", ".join(_uid_name(ts) for ts in DEFAULT_TRANSFER_SYNTAXES),
                "SCU",
                "None",
            )
        ],
    )
    doc.section(4, "Association Acceptance Policy")
    doc.text(
        "The N-EVENT-REPORT (Event Type ID 1, all committed; 2, failures) is accepted on a new association "
        "(PS3.4 J.3.3). Committed instances are done; failed ones, those the report leaves out, and those "
        "with no report within `commitment_timeout` are sent again by the retry policy."
    )
    doc.table(
        "Accepted presentation contexts (Storage Commitment)",
        ("Abstract syntax", "Transfer syntaxes", "Role", "Extended negotiation"),
        [
            (
                f"{_uid_name(StorageCommitmentPushModel)} ({StorageCommitmentPushModel})",
                ", ".join(_uid_name(ts) for ts in DEFAULT_TRANSFER_SYNTAXES),
                "SCU (SCP/SCU role selection accepted)",
                "None",
            )
        ],
    )
    doc.table(
        "N-EVENT-REPORT response statuses",
        ("Status", "When"),
        [
            (_hex(status.SUCCESS), "The report is recorded (or names an unknown transaction)."),
            (
                _hex(status.PROCESSING_FAILURE),
                "The report has no Transaction UID, a wrong event type, or cannot be recorded.",
            ),
            (_hex(status.SOP_CLASS_NOT_SUPPORTED), "The report is not of Storage Commitment Push Model."),
        ],
    )


def _web_services(doc: _Document, defaults: Settings) -> None:
    doc.section(3, "Web Services (DICOMweb, PS3.18)")
    doc.text(
        "Beside its AEs, the node takes instances by STOW-RS and exchanges them with DICOMweb servers "
        "(destinations and sources of `type: dicomweb`, through the dicomweb-client library). Instances "
        "received by STOW-RS go through the same receiver as a C-STORE: same checks, same statuses."
    )
    doc.table(
        "DICOMweb services",
        ("Service", "Role", "Resources and media types", "Notes"),
        [
            (
                "STOW-RS",
                "Origin server",
                "`POST /dicomweb/studies`, `POST /dicomweb/studies/{study}`; request "
                f'`multipart/related; type="application/dicom"`; response `{DICOM_JSON}`',
                "200 all stored, 202 some failed, 409 all failed (Failure Reason: the C-STORE status of the "
                "table above); a request over `stow_max_request_size` "
                f"(default {defaults.stow_max_request_size} bytes) is answered 413. Needs a token or user.",
            ),
            ("STOW-RS", "User agent", "A destination's `url`; Part 10 files as stored", "Results delivered."),
            (
                "QIDO-RS, WADO-RS",
                "User agent",
                "A source's `url`: studies, series and instances searched; series retrieved with `transfer-syntax=*`",
                "Instances as the server stores them, never transcoded (`ainode pull`).",
            ),
        ],
    )


def _configuration(doc: _Document, defaults: Settings) -> None:
    doc.text(
        "Everything is configured in `config/node.yaml` (or `--config FILE`, or `AINODE_<KEY>` environment "
        "variables); the values below are the defaults."
    )
    doc.section(3, "AE Title/Presentation Address Mapping")
    doc.section(4, "Local AE Titles")
    doc.table(
        "Local AE titles and ports",
        ("AE", "AE title (setting)", "Default AE title", "Port (setting)", "Default port"),
        [
            ("Storage AE", "`ae_title`", defaults.ae_title, "`port`", defaults.port),
            ("Storage AE over TLS", "`ae_title`", defaults.ae_title, "`tls.port` (`tls.enabled`)", defaults.tls.port),
            (
                "Storage Commitment AE",
                "`storage_commitment.ae_title`",
                defaults.storage_commitment.ae_title,
                "`storage_commitment.port`",
                defaults.storage_commitment.port,
            ),
        ],
    )
    doc.section(4, "Remote AE Title/Presentation Address Mapping")
    doc.text(
        "Peers allowed to send: `allowed_peers` (AE title and, optionally, IP address). Destinations: "
        "`destinations` (AE title, host, port, TLS, storage commitment). Sources: `sources` (AE title, host, "
        "port, `retrieve: move|get`). The default destination:"
    )
    doc.table(
        "Default destinations",
        ("Name", "Type", "AE title", "Host", "Port", "TLS", "Storage commitment"),
        [
            (
                name,
                d.type,
                getattr(d, "ae_title", "-"),
                getattr(d, "host", "-"),
                getattr(d, "port", "-"),
                getattr(d, "tls", "-"),
                getattr(d, "storage_commitment", "-"),
            )
            for name, d in sorted(defaults.destinations.items())
        ],
    )
    doc.section(3, "Parameters")
    limits = defaults.dicom_limits
    doc.table(
        "Configuration parameters",
        ("Parameter", "Setting", "Default"),
        [
            ("Listening address", "`host`", defaults.host),
            ("Maximum PDU size received", "`max_pdu`", defaults.max_pdu),
            ("Maximum simultaneous associations", "`max_associations`", defaults.max_associations),
            (
                "Association request timeout (s)",
                "`dicom_limits.association_request_timeout`",
                f"{limits.association_request_timeout:g}",
            ),
            ("ACSE timeout (s)", "`dicom_limits.acse_timeout`", f"{limits.acse_timeout:g}"),
            ("Network timeout (s)", "`dicom_limits.network_timeout`", f"{limits.network_timeout:g}"),
            ("DIMSE timeout (s)", "`dicom_limits.dimse_timeout`", f"{limits.dimse_timeout:g}"),
            ("Largest data set accepted (bytes)", "`dicom_limits.max_dataset_size`", limits.max_dataset_size),
            ("UID root of created objects", "`uid_root`", defaults.uid_root),
            ("Series Number of the first result series", "`result_series_number`", defaults.result_series_number),
            (
                "Quiet period before a series is analysed (s), by modality",
                "`quiet_period`",
                ", ".join(f"{k}: {v:g}" for k, v in sorted(defaults.quiet_period.items())),
            ),
            ("Delivery: first retry after (s)", "`delivery.backoff_initial`", f"{defaults.delivery.backoff_initial:g}"),
            ("Delivery: longest back-off (s)", "`delivery.backoff_max`", f"{defaults.delivery.backoff_max:g}"),
            (
                "Delivery: dead letter after (h)",
                "`delivery.give_up_after_hours`",
                f"{defaults.delivery.give_up_after_hours:g}",
            ),
            ("HTTP server (STOW-RS, metrics)", "`http_host`:`http_port`", f"{defaults.http_host}:{defaults.http_port}"),
        ],
    )


def _character_sets(doc: _Document) -> None:
    from sr_writer.source_attributes import _KEPT_CHARSETS, _UTF8

    doc.section(1, "Support of Character Sets")
    doc.text(
        "Received instances are stored as received, in any Specific Character Set (0008,0005); the node reads "
        "only UIDs and coded strings from them. A result object copies the patient and study attributes of its "
        "source with the source's Specific Character Set when it is one of the table below; a source in another "
        f"character set (ISO 2022 code extensions) has its text decoded and the result written in `{_UTF8}` "
        "(UTF-8). A value the character set cannot hold is dropped from the result (and said so in the job's "
        "log), never written wrongly. The node's own texts are in the default repertoire."
    )
    doc.table(
        "Specific Character Sets kept in results", ("Specific Character Set",), [(c,) for c in sorted(_KEPT_CHARSETS)]
    )


def _security(doc: _Document, defaults: Settings) -> None:
    version = MINIMUM_VERSION.name.replace("TLSv", "TLS ").replace("_", ".")
    doc.section(1, "Security")
    doc.section(2, "Security Profiles")
    doc.text(
        "The Basic TLS Secure Transport Connection Profile (PS3.15 B.1) and the BCP 195 profiles "
        f"(PS3.15 B.9, B.10) are supported: TLS {version.split()[-1]} or later (minimum pinned in the code), "
        "forward-secret AEAD cipher suites (Python's default contexts), no TLS compression, X.509 certificates "
        "in PEM files. The SCP listens for TLS on `tls.port` (default "
        f"{defaults.tls.port}, `tls.enabled`, default {str(defaults.tls.enabled).lower()}); `port` may be set "
        "to null so that only TLS is served. Client certificates are verified against `tls.ca_certificates` "
        "(only those CAs) and required with `tls.require_client_certificate`. Destinations and sources with "
        "`tls: true` verify the peer's certificate and host name, optionally with a client certificate."
    )
    doc.section(2, "Association Level Security")
    doc.text(
        "The Called AE Title must be the node's; the Calling AE Title must be listed in `allowed_peers`, "
        "optionally bound to an IP address. An empty list rejects every association (fail closed). Rejected "
        "associations and what each association stored are audited (`ainode audit`)."
    )
    doc.section(2, "Application Level Security")
    doc.text(
        "The HTTP server (STOW-RS intake, pull, metrics) listens on "
        f"{defaults.http_host}:{defaults.http_port} by default; every route but `/healthz` and `/readyz` "
        f"(and `/metrics` with `http_metrics_auth: false`; default {str(defaults.http_metrics_auth).lower()}) "
        "needs an API token (`http_tokens`) or a user (`http_users`, scrypt-hashed passwords; the admin pages "
        "and `/metrics` also take their login session); HTTPS when `http_tls` names a certificate. The node writes "
        "no patient data in its logs (AE titles, addresses and UIDs only)."
    )


def _annexes(doc: _Document, defaults: Settings) -> None:
    from sr_writer.codes import CONCEPTS, PRIVATE_SCHEMES

    doc.section(1, "Annexes")
    doc.section(2, "IOD Contents")
    doc.section(3, "Created SOP Instances")
    doc.text(
        "Every result is a new object in the source study, in a new series (Series Number from "
        f"`result_series_number`, default {defaults.result_series_number}, and the following numbers), "
        f"under `uid_root` (default `{defaults.uid_root}`; the project's root is `{PROJECT_UID_ROOT}`), with "
        f"Manufacturer `{MANUFACTURER}`, the IHE AI Results Contributing Equipment items naming each "
        "algorithm, and the patient and study attributes of the source. Results are written in "
        f"{_uid_name(ExplicitVRLittleEndian)} and checked with dciodvfy by the tests."
    )
    rows = []
    for name, uid in sorted(WRITTEN_SOP_CLASSES.items(), key=lambda item: (_uid_name(item[1]), item[0])):
        module = _writer(name)
        descriptions = ", ".join(f'"{getattr(module, constant)}"' for constant in _SERIES_DESCRIPTION[name])
        templates = ", ".join(_templates(inspect.getdoc(module) or "")) or "-"
        rows.append((f"{_uid_name(uid)} ({uid})", f"`sr_writer.{name}`", descriptions, templates))
    doc.table("Created SOP instances", ("SOP class", "Writer", "Series Description", "Templates (PS3.16)"), rows)
    for name, _uid in sorted(WRITTEN_SOP_CLASSES.items(), key=lambda item: (_uid_name(item[1]), item[0])):
        doc.text(f"**`sr_writer.{name}`**: " + _first_paragraph(inspect.getdoc(_writer(name))))
    doc.table(
        "Series Number of each result series",
        ("Pipeline", "Object", "Series Number", "Default"),
        [
            (pipeline, kind, f"`result_series_number` + {offset}", defaults.result_series_number + offset)
            for pipeline, offsets in _series_offsets()
            for kind, offset in sorted(offsets.items(), key=lambda item: item[1])
        ],
    )
    doc.section(3, "Modules of the Created Objects")
    doc.text("The IOD modules of each created SOP class (PS3.3, as highdicom writes them):")
    for uid in sorted(set(WRITTEN_SOP_CLASSES.values()), key=_uid_name):
        doc.table(
            f"Modules of {_uid_name(uid)}",
            ("Information entity", "Module", "Usage"),
            [(ie, module, _USAGE.get(usage, usage)) for ie, module, usage in _modules(uid)],
        )
    doc.section(3, "Key Attributes")
    doc.table(
        "Attributes every created object sets",
        ("Attribute", "Value"),
        [
            ("Manufacturer (0008,0070)", MANUFACTURER),
            ("Study Instance UID (0020,000D)", "The source's"),
            ("Series Instance UID, SOP Instance UID", "New, under `uid_root`"),
            ("Series Number (0020,0011)", f"`result_series_number` ({defaults.result_series_number}) and following"),
            ("Contributing Equipment Sequence (0018,A001)", "The node and each algorithm (IHE AI Results)"),
            ("Coding Scheme Identification Sequence (0008,0110)", "Every private scheme the object uses (8.3)"),
        ],
    )
    doc.section(2, "Data Dictionary of Private Attributes")
    doc.text("None: the node writes no private attributes.")
    doc.section(2, "Coded Terminology and Templates")
    doc.text(
        "Every code the node writes comes from one table (`sr_writer.codes.CONCEPTS`); standard codes are "
        "checked against PS3.16 by the tests. Concepts with no standard code use the private schemes below, "
        "declared in each object's Coding Scheme Identification Sequence."
    )
    doc.table(
        "Private coding schemes",
        ("Designator", "Name", "Responsible organization", "UID"),
        [(s.designator, s.name, s.responsible_organization, s.uid or "-") for _, s in sorted(PRIVATE_SCHEMES.items())],
    )
    doc.table(
        "Coded concepts written",
        ("Code value", "Scheme", "Code meaning", "Finding", "Source"),
        [
            (c.value, c.scheme, c.meaning, "Yes" if c.is_finding else "", c.source)
            for c in sorted(CONCEPTS.values(), key=lambda c: (c.scheme, c.value, c.meaning))
        ],
    )
    doc.section(2, "Grayscale Image Consistency")
    doc.text(
        "The node does not support the Grayscale Standard Display Function as a display. Its presentation "
        "states keep each source image's Modality LUT and VOI (window or VOI LUT; a full-range window when "
        "the source has none) and set Presentation LUT Shape INVERSE for MONOCHROME1 sources; its Secondary "
        "Capture images are rendered through the same transformations (PS3.4 N.2)."
    )
    doc.section(2, "Standard Extended, Specialized and Private SOP Classes")
    doc.text("None.")
    doc.section(2, "Private Transfer Syntaxes")
    doc.text("None.")


def _modules(sop_class_uid: str) -> list[tuple[str, str, str]]:
    """(information entity, module name, usage) of the IOD of a SOP class, from highdicom's copy of PS3.3."""
    from highdicom._standard_utils import get_iod_module_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map()[sop_class_uid]
    return [(str(m["ie"]), _module_name(str(m["key"])), str(m["usage"])) for m in get_iod_module_map()[iod]]


def _module_name(key: str) -> str:
    """``sop-common`` -> ``SOP Common``: highdicom's module key as PS3.3 names the module."""
    words = [word.upper() if word in _ACRONYMS else word.capitalize() for word in key.split("-")]
    return " ".join(words)


def lines_of_table(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the table named ``title`` in a statement, as lists of cells (for tests and tools)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Table ") and line.endswith(f". {title}**"))
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows
