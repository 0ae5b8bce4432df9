"""IHE AIR Contributing Equipment item and the deterministic Device UID."""

from __future__ import annotations

import dataclasses
import re

from core.findings import AlgorithmInfo
from sr_writer.equipment import contributing_equipment_item, device_uid

ALGO = AlgorithmInfo(name="cxr-view-filter", version="1.2.0", manufacturer="ainode", weights_sha256="a1" * 32)


def test_device_uid_is_stable_and_changes_with_version_and_weights() -> None:
    uid = device_uid(ALGO)
    assert uid == device_uid(AlgorithmInfo(**dataclasses.asdict(ALGO)))
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert device_uid(dataclasses.replace(ALGO, version="1.3.0")) != uid
    assert device_uid(dataclasses.replace(ALGO, weights_sha256="c3" * 32)) != uid
    assert device_uid(dataclasses.replace(ALGO, name="other")) != uid
    # Demo or not is a property of the weights, not an identity of its own.
    assert device_uid(dataclasses.replace(ALGO, demo=True)) == uid


def test_item_names_the_algorithm_as_ihe_processing_algorithm() -> None:
    item = contributing_equipment_item(dataclasses.replace(ALGO, demo=True))
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "Newcode1",
        "99IHE",
        "Processing Algorithm",
    )
    assert item.Manufacturer == "ainode"
    assert item.ManufacturerModelName == "cxr-view-filter (DEMO)"
    assert item.SoftwareVersions == "1.2.0"
    assert item.DeviceUID == device_uid(ALGO)
    assert "a1" * 32 in item.ContributionDescription
