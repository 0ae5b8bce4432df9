"""Every object we write declares the private coding schemes it uses, and leaves out what does not apply.

PS3.3 C.12.1.1.5: a Coding Scheme Designator that is not one of PS3.16's (our ``99AINODE``, IHE's
``99IHE`` of the AI Results contributing equipment) is identified in the Coding Scheme Identification
Sequence (0008,0110). Each object type is built as the node builds it and walked recursively, so a
code added deep in a sequence (a segment's type modifier, a contributing equipment purpose) is seen.

General Series Laterality (0020,0060) is Type 2C (PS3.3 C.7.3.1): absent for an unpaired body part
(a chest, an abdomen), the source's when it has one, empty only when nothing says whether the part is
paired.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from core.findings import AlgorithmInfo
from sr_writer import (
    build_key_object_selection,
    build_lumbar_report,
    build_measurement_report,
    build_pe_report,
    build_presentation_state,
    build_secondary_capture,
    build_slice_labels,
    build_tissue_segmentation,
)
from sr_writer.codes import PRIVATE_SCHEMES, declare_private_schemes, designators_used
from sr_writer.slice_labels import level_labels, pe_labels
from tests.helpers import assert_dciodvfy_clean, rg1_uncr_path
from tests.sr_writer.scenarios import cxr_result, read_rg1_header, series, write
from tests.sr_writer.test_ct_objects import ct_series, headers, lumbar_result, pe_result

_MASKS = {k: np.zeros((64, 64), bool) for k in ("muscle", "subcutaneous_fat", "visceral_fat")}


def _chest_sr() -> Dataset:
    source = read_rg1_header()
    return build_measurement_report(cxr_result(source), [source], params=series(990))


def _boxes() -> Dataset:
    source = read_rg1_header()
    return build_presentation_state(cxr_result(source), [source], params=series(991))


def _capture() -> Dataset:
    source = pydicom.dcmread(rg1_uncr_path())
    return build_secondary_capture(cxr_result(source), source, params=series(992))


def _pe_sr() -> Dataset:
    slices = ct_series(8)
    return build_pe_report(pe_result(slices), headers(slices), params=series(993))


def _lumbar_sr() -> Dataset:
    slices = ct_series(14)
    return build_lumbar_report(lumbar_result(slices), headers(slices), params=series(994))


def _kos() -> Dataset:
    slices = ct_series(8)
    keys = [str(slices[3].SOPInstanceUID)]
    return build_key_object_selection(
        pe_result(slices), headers(slices), keys, title="of_interest", params=series(995), description="PE"
    )


def _seg() -> Dataset:
    slices = ct_series(3)
    algorithm = AlgorithmInfo(name="ct-lumbar", version="1.0.0")
    return build_tissue_segmentation(slices[1], _MASKS, algorithm, params=series(996))


def _level_labels() -> Dataset:
    slices = ct_series(14)
    result = lumbar_result(slices)
    assert result.lumbar is not None
    return build_slice_labels(result, headers(slices), level_labels(result.lumbar), params=series(997))


def _pe_labels() -> Dataset:
    slices = ct_series(8)
    result = pe_result(slices)
    assert result.pe is not None
    return build_slice_labels(result, headers(slices), pe_labels(result.pe), params=series(998))


OBJECTS: dict[str, Callable[[], Dataset]] = {
    "chest SR": _chest_sr,
    "boxes GSPS": _boxes,
    "secondary capture": _capture,
    "PE SR": _pe_sr,
    "lumbar SR": _lumbar_sr,
    "KOS": _kos,
    "SEG": _seg,
    "level labels GSPS": _level_labels,
    "PE labels GSPS": _pe_labels,
}


@pytest.mark.parametrize("kind", OBJECTS)
def test_every_private_scheme_used_is_declared_with_its_identification(kind: str, tmp_path: Path) -> None:
    ds = OBJECTS[kind]()
    path = write(ds, tmp_path, kind.replace(" ", "_"))
    assert_dciodvfy_clean(path)
    back = pydicom.dcmread(path)
    private = {d for d in designators_used(back) if d.startswith("99")}
    # Every object names its algorithms in IHE AI Results contributing equipment (99IHE).
    assert "99IHE" in private, f"{kind}: the walk found no private scheme: {sorted(set(designators_used(back)))}"
    items = list(back.get("CodingSchemeIdentificationSequence", []))
    declared = [str(item.CodingSchemeDesignator) for item in items]
    assert len(declared) == len(set(declared)), f"{kind}: a scheme is declared twice: {declared}"
    assert private <= set(declared), f"{kind}: {sorted(private - set(declared))} used but not declared"
    for item in items:
        scheme = PRIVATE_SCHEMES.get(str(item.CodingSchemeDesignator))
        if scheme is None:
            continue
        assert item.CodingSchemeName == scheme.name, kind
        assert item.CodingSchemeResponsibleOrganization == scheme.responsible_organization, kind
        assert item.get("CodingSchemeUID") == scheme.uid, kind


def test_our_private_schemes_are_named_and_ours_has_a_uid() -> None:
    assert set(PRIVATE_SCHEMES) == {"99AINODE", "99IHE"}
    for designator, scheme in PRIVATE_SCHEMES.items():
        assert scheme.designator == designator and designator.startswith("99")
        assert scheme.name.strip() and scheme.responsible_organization.strip()
    uid = PRIVATE_SCHEMES["99AINODE"].uid
    assert uid is not None and uid.startswith("2.25.") and len(uid) <= 64


def test_declaring_keeps_what_is_declared_and_names_a_foreign_scheme_by_its_designator() -> None:
    ds = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99XYZ", "copied from a source"
    ours = Dataset()
    ours.CodeValue, ours.CodingSchemeDesignator, ours.CodeMeaning = "RANK", "99AINODE", "Top finding rank"
    inner = Dataset()
    inner.ConceptNameCodeSequence = [ours]
    ds.ContentSequence = [inner]
    ds.AnatomicRegionSequence = [code]
    existing = Dataset()
    existing.CodingSchemeDesignator, existing.CodingSchemeName = "99XYZ", "named by the source"
    ds.CodingSchemeIdentificationSequence = [existing]

    declare_private_schemes(ds)
    declare_private_schemes(ds)  # twice: nothing is added again
    items = {str(i.CodingSchemeDesignator): i for i in ds.CodingSchemeIdentificationSequence}
    assert list(items) == ["99XYZ", "99AINODE"]
    assert items["99XYZ"].CodingSchemeName == "named by the source"
    assert items["99AINODE"].CodingSchemeUID == PRIVATE_SCHEMES["99AINODE"].uid


def test_nothing_is_declared_when_no_private_scheme_is_used() -> None:
    ds = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121071", "DCM", "Finding"
    ds.ConceptNameCodeSequence = [code]
    declare_private_schemes(ds)
    assert "CodingSchemeIdentificationSequence" not in ds


# --- Laterality -------------------------------------------------------------------------------------


def _radiograph(**attributes: str | None) -> Dataset:
    source = pydicom.dcmread(rg1_uncr_path())
    source = copy.deepcopy(source)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in source:
                delattr(source, keyword)
        else:
            setattr(source, keyword, value)
    return source


@pytest.mark.parametrize(
    ("attributes", "expected_laterality"),
    [
        ({}, None),  # the real chest CR: BodyPartExamined CHEST, no Laterality: none on ours
        ({"Laterality": "R"}, None),  # a chest is unpaired whatever the source says
        ({"BodyPartExamined": "KNEE", "Laterality": "L"}, "L"),
        ({"BodyPartExamined": "HAND", "ImageLaterality": "R"}, "R"),
        ({"BodyPartExamined": "KNEE"}, ""),  # paired, side unknown
        ({"BodyPartExamined": None}, ""),  # nothing says whether the part is paired
    ],
)
def test_presentation_state_and_capture_carry_laterality_only_where_it_applies(
    attributes: dict[str, str | None], expected_laterality: str | None, tmp_path: Path
) -> None:
    source = _radiograph(**attributes)
    header = copy.deepcopy(source)
    del header.PixelData
    for name, ds in (
        ("gsps", build_presentation_state(cxr_result(header), [header], params=series(991))),
        ("sc", build_secondary_capture(cxr_result(source), source, params=series(992))),
    ):
        path = write(ds, tmp_path, name)
        assert_dciodvfy_clean(path)
        back = pydicom.dcmread(path)
        if expected_laterality is None:
            assert "Laterality" not in back, f"{name}: {back.get('Laterality')!r}"
        else:
            assert back.Laterality == expected_laterality, name
        assert back.get("BodyPartExamined") == source.get("BodyPartExamined"), name


@pytest.mark.parametrize("kind", ["KOS", "SEG"])
def test_kos_and_seg_carry_no_empty_laterality(kind: str) -> None:
    ds = OBJECTS[kind]()
    assert "Laterality" not in ds
