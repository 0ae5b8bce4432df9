"""Reading an SR the way a viewer would: walk the content tree, collect concept/value pairs."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset


def walk(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from walk(item)


def coded_values(ds: Dataset, concept_code: str) -> list[str]:
    """Meanings of the coded values of every CODE item whose concept name has ``concept_code``."""
    found = []
    for item in walk(ds):
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == concept_code and item.get("ValueType") == "CODE":
            found.append(str(item.ConceptCodeSequence[0].CodeMeaning))
    return found


def texts(ds: Dataset) -> list[str]:
    return [str(item.TextValue) for item in walk(ds) if item.get("ValueType") == "TEXT"]


def numbers(ds: Dataset) -> list[float]:
    return [
        float(item.MeasuredValueSequence[0].NumericValue)
        for item in walk(ds)
        if item.get("ValueType") == "NUM" and item.get("MeasuredValueSequence")
    ]


def referenced_sops(ds: Dataset) -> set[str]:
    refs = set()
    for item in walk(ds):
        for ref in item.get("ReferencedSOPSequence", []):
            refs.add(str(ref.ReferencedSOPInstanceUID))
    for ev in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in ev.ReferencedSeriesSequence:
            for ref in series.ReferencedSOPSequence:
                refs.add(str(ref.ReferencedSOPInstanceUID))
    return refs
