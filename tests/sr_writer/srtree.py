"""Reading our SRs the way OHIF v3's SR extension does, for the tests of what a viewer can show.

OHIF (extensions/cornerstone-dicom-sr, getSopClassHandlerModule) reads a TID 1500 report like this:
the Image Library (111028) gives the referenced images; each Measurement Group (125007) of the
Imaging Measurements (126010) is keyed by its Tracking Unique Identifier (112040), groups with the
same one are merged; a merged group with a top-level SCOORD is drawn on the image its SCOORD is
selected from, and its text box lists "name: value unit" of its top-level NUMs, then its first
Finding Site (363698007). A group's first UIDREF is taken as its Tracking Unique Identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom import Dataset


@dataclass
class Shown:
    """One measurement as OHIF makes it from the merged groups of one Tracking Unique Identifier."""

    tracking_uid: str
    tracking_identifier: str
    graphic_type: str
    referenced_sop_instance_uid: str
    referenced_sop_class_uid: str
    labels: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The text box lines (OHIF 3.13 shows up to five)."""
        return [f"{name}: {value}" for name, value in self.labels]


def _name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def root_items(ds: Dataset, code_value: str) -> list[Dataset]:
    return [item for item in ds.ContentSequence if _name(item) == code_value]


def measurement_groups(ds: Dataset) -> list[Dataset]:
    (measurements,) = root_items(ds, "126010")
    return [g for g in measurements.ContentSequence if _name(g) == "125007"]


def image_library(ds: Dataset) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every IMAGE item of the Image Library's groups."""
    (library,) = root_items(ds, "111028")
    found = []
    for group in library.ContentSequence:
        assert _name(group) == "126200"
        for item in group.ContentSequence:
            if item.ValueType == "IMAGE":
                ref = item.ReferencedSOPSequence[0]
                found.append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)))
    return found


def shown(ds: Dataset) -> list[Shown]:
    """The measurements OHIF draws: merged groups with a top-level SCOORD, in the report's order."""
    merged: dict[str, list[Dataset]] = {}
    for group in measurement_groups(ds):
        items = list(group.ContentSequence)
        (uid_item,) = [i for i in items if _name(i) == "112040"]
        merged.setdefault(str(uid_item.UID), []).extend(items)
    result = []
    for items in merged.values():
        scoords = [i for i in items if i.ValueType == "SCOORD"]
        if not scoords:
            continue
        first_uidref = next(i for i in items if i.ValueType == "UIDREF")
        identifier = next(i for i in items if _name(i) == "112039")
        ref = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
        measurement = Shown(
            tracking_uid=str(first_uidref.UID),
            tracking_identifier=str(identifier.TextValue),
            graphic_type=str(scoords[0].GraphicType),
            referenced_sop_instance_uid=str(ref.ReferencedSOPInstanceUID),
            referenced_sop_class_uid=str(ref.ReferencedSOPClassUID),
        )
        for item in items:
            if item.ValueType == "NUM" and item.get("MeasuredValueSequence"):
                value = item.MeasuredValueSequence[0]
                unit = value.MeasurementUnitsCodeSequence[0].CodeValue
                measurement.labels.append(
                    (str(item.ConceptNameCodeSequence[0].CodeMeaning), f"{float(value.NumericValue):.2f} {unit}")
                )
        sites = [i for i in items if _name(i) == "363698007" and i.ValueType == "CODE"]
        if sites:
            measurement.labels.append(("363698007", str(sites[0].ConceptCodeSequence[0].CodeMeaning)))
        result.append(measurement)
    return result


def device_observers(items: list[Dataset]) -> list[dict[str, str]]:
    """The device observers (TID 1002/1004) among ``items``: each as {code value: text or UID}."""
    observers: list[dict[str, str]] = []
    for item in items:
        if item.RelationshipType != "HAS OBS CONTEXT":
            continue
        code_value = _name(item)
        if code_value == "121005":
            assert item.ConceptCodeSequence[0].CodeValue == "121007", "observer type is not Device"
            observers.append({})
        elif code_value in ("121012", "121013", "121014", "121015") and observers:
            observers[-1][code_value] = str(item.UID if item.ValueType == "UIDREF" else item.TextValue)
    return observers


def group_algorithm(group: Dataset) -> tuple[str, str]:
    """(Algorithm Name, Algorithm Version) of a group's TID 4019."""
    texts = {_name(i): str(i.TextValue) for i in group.ContentSequence if i.ValueType == "TEXT"}
    return texts["111001"], texts["111003"]
