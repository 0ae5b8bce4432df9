"""Encoding AI results (``core.findings``) as standard DICOM objects.

One module per object family over highdicom (SR ``sr`` and ``ct_sr``, GSPS ``gsps``
and ``slice_labels``, Secondary Capture ``sc``, Key Object Selection ``kos``,
Segmentation ``seg``), plus one table of coded
concepts (:mod:`sr_writer.codes`) and the checks of what every writer copies
from its sources (:mod:`sr_writer.source_attributes`). Nothing here touches the network or the
database.

Every builder takes a :class:`SeriesParams` (UID root, Series and Instance Number, Series Description,
Institution Name); what the writers share is in :mod:`sr_writer.common` (every object) and
:mod:`sr_writer.report` (the TID 1500 SRs). Every exception a writer raises is a :class:`WriterError`
(:mod:`sr_writer.errors`), and also the ValueError, TypeError or KeyError it refines. The package imports
only :mod:`core` of the node's own packages.
"""

from sr_writer.codes import (
    CHESTXRAY14_LABELS,
    CONCEPTS,
    FOUR_CLASS_LABELS,
    TRIAGE_KEYS,
    Concept,
    code,
    display_name,
    finding_concept,
    finding_key,
)
from sr_writer.common import MANUFACTURER, SeriesParams
from sr_writer.ct_sr import build_lumbar_report, build_pe_report
from sr_writer.equipment import contributing_equipment_item, device_uid
from sr_writer.errors import (
    InvalidResultError,
    InvalidSourceValue,
    ParameterError,
    ParameterTypeError,
    UnknownConceptError,
    WriterError,
)
from sr_writer.gsps import GRAPHIC_LAYER, build_presentation_state
from sr_writer.kos import KOS_TITLES, build_key_object_selection
from sr_writer.sc import build_secondary_capture, render_radiograph
from sr_writer.seg import build_tissue_segmentation
from sr_writer.slice_labels import LABEL_LAYER, build_slice_labels, level_labels, pe_labels
from sr_writer.source_attributes import SourceAttributeIssue, clean_source, describe_issues, source_attribute_issues
from sr_writer.sr import build_measurement_report
from sr_writer.uids import new_uid, validate_uid_root

__all__ = [
    "CHESTXRAY14_LABELS",
    "CONCEPTS",
    "Concept",
    "FOUR_CLASS_LABELS",
    "GRAPHIC_LAYER",
    "InvalidResultError",
    "InvalidSourceValue",
    "KOS_TITLES",
    "LABEL_LAYER",
    "MANUFACTURER",
    "ParameterError",
    "ParameterTypeError",
    "SeriesParams",
    "SourceAttributeIssue",
    "TRIAGE_KEYS",
    "UnknownConceptError",
    "WriterError",
    "build_key_object_selection",
    "build_lumbar_report",
    "build_measurement_report",
    "build_pe_report",
    "build_presentation_state",
    "build_secondary_capture",
    "build_slice_labels",
    "build_tissue_segmentation",
    "clean_source",
    "code",
    "contributing_equipment_item",
    "describe_issues",
    "device_uid",
    "display_name",
    "finding_concept",
    "finding_key",
    "level_labels",
    "new_uid",
    "pe_labels",
    "render_radiograph",
    "source_attribute_issues",
    "validate_uid_root",
]
