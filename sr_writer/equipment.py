"""Contributing Equipment for AI results, as IHE RAD AI Results (AIR) asks.

Each algorithm that contributed to a result object gets one item of the
Contributing Equipment Sequence (0018,A001) (PS3.3 C.12.1, SOP Common module)
with Purpose of Reference (Newcode1, 99IHE, "Processing Algorithm"), the
algorithm's manufacturer, display name, version and a Device UID (0018,1002).

highdicom's :class:`~highdicom.ContributingEquipment` accepts only DCM
purposes of reference (CID 7005), so the item is built with pydicom.
"""

from __future__ import annotations

import datetime
import uuid

from pydicom import Dataset
from pydicom.valuerep import DT

from core.findings import AlgorithmInfo
from sr_writer.codes import code

__all__ = ["add_contributing_equipment", "contributing_equipment_item", "device_uid"]

# Fixed namespace so that the same (name, version, weights) always gives the same Device UID.
_DEVICE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "ainode.algorithm")


def device_uid(algorithm: AlgorithmInfo) -> str:
    """The Device UID of an algorithm: ``2.25.`` + a UUID5 of name, version and weights.

    PS3.5 B.2 allows UUID-derived UIDs under ``2.25``. The UID is
    deterministic, so every result of one model build names the same device,
    and it changes with the version or the weights checksum.
    """
    key = "\n".join((algorithm.name, algorithm.version, algorithm.weights_sha256))
    return f"2.25.{uuid.uuid5(_DEVICE_NAMESPACE, key).int}"


def contributing_equipment_item(algorithm: AlgorithmInfo, when: datetime.datetime | None = None) -> Dataset:
    """One Contributing Equipment Sequence item naming ``algorithm``.

    Parameters
    ----------
    algorithm : core.findings.AlgorithmInfo
        The model; its :attr:`~core.findings.AlgorithmInfo.display_name`
        (with "(DEMO)" for demo weights) becomes Manufacturer's Model Name.
    when : datetime.datetime, optional
        Contribution DateTime (0018,A002); now when omitted.
    """
    purpose = Dataset()
    concept = code("processing_algorithm")
    purpose.CodeValue = concept.value
    purpose.CodingSchemeDesignator = concept.scheme_designator
    purpose.CodeMeaning = concept.meaning

    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = algorithm.manufacturer
    item.ManufacturerModelName = algorithm.display_name
    item.SoftwareVersions = algorithm.version
    item.DeviceUID = device_uid(algorithm)
    item.ContributionDateTime = DT((when or datetime.datetime.now()).strftime("%Y%m%d%H%M%S"))
    description = f"AI model {algorithm.display_name} {algorithm.version}"
    if algorithm.weights_sha256:
        description += f", weights sha256 {algorithm.weights_sha256}"
    item.ContributionDescription = description
    return item


def add_contributing_equipment(dataset: Dataset, algorithms: list[AlgorithmInfo]) -> None:
    """Append one item per algorithm to the dataset's Contributing Equipment Sequence."""
    if "ContributingEquipmentSequence" not in dataset:
        dataset.ContributingEquipmentSequence = []
    for algorithm in algorithms:
        dataset.ContributingEquipmentSequence.append(contributing_equipment_item(algorithm))
