"""The coded-concept table: every code is the standard's, and every code we write is in the table."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.sr._concepts_dict import concepts as PS316_CONCEPTS

from sr_writer import codes
from sr_writer.codes import CONCEPTS, VIEW_POSITION_KEYS, code, finding_concept, key_for
from tests.sr_writer.scenarios import VARIANTS, build_variant

# pydicom's dictionary is generated from PS3.16 (DCM, SCT, LN, UCUM, ...); index it by (scheme, value).
_STANDARD: dict[tuple[str, str], list[tuple[str, list[int]]]] = {}
for _scheme, _by_keyword in PS316_CONCEPTS.items():
    for _entries in _by_keyword.values():
        for _value, (_meaning, _cids) in _entries.items():
            _STANDARD.setdefault((_scheme, _value), []).append((_meaning, _cids))

# Concepts whose source says PS3.16 are re-checked against pydicom's copy of it; the other
# standard codes (SNOMED concepts no CID holds) name the published page they were checked on.
_CHECKABLE = sorted(
    k for k, c in CONCEPTS.items() if c.scheme in ("DCM", "SCT", "LN", "UCUM") and c.source.startswith("PS3.16")
)
_OUTSIDE_PS316 = sorted(
    k for k, c in CONCEPTS.items() if c.scheme in ("DCM", "SCT", "LN") and not c.source.startswith("PS3.16")
)
#: UCUM units not listed in PS3.16 (CID 7181 admits any UCUM expression) must say how they follow the grammar.
_UCUM_OUTSIDE_PS316 = sorted(k for k, c in CONCEPTS.items() if c.scheme == "UCUM" and not c.source.startswith("PS3.16"))


@pytest.mark.parametrize("key", _CHECKABLE)
def test_standard_codes_match_ps3_16(key: str) -> None:
    concept = CONCEPTS[key]
    entries = _STANDARD.get((concept.scheme, concept.value))
    assert entries, f"{key}: ({concept.value}, {concept.scheme}) is not a code of PS3.16"
    # SNOMED fully specified names carry a semantic tag, e.g. "Source (attribute)"; DICOM drops it.
    meanings = [m for m, _ in entries] + [re.sub(r" \([a-z ]+\)$", "", m) for m, _ in entries]
    assert concept.meaning in meanings, f"{key}: meaning {concept.meaning!r} is not the standard's {meanings}"
    # A "CID nnnn" claimed in the source note must be a context group that holds the code.
    cids = {cid for _, group in entries for cid in group}
    for claimed in re.findall(r"CID (\d+)", concept.source):
        assert int(claimed) in cids, f"{key}: PS3.16 does not list it in CID {claimed} (it is in {sorted(cids)})"


def test_every_concept_has_a_source_and_an_allowed_scheme() -> None:
    for key, concept in CONCEPTS.items():
        assert concept.source.strip(), key
        assert concept.scheme in codes.ALLOWED_SCHEMES or concept.scheme.startswith("99"), key


@pytest.mark.parametrize("key", _UCUM_OUTSIDE_PS316)
def test_ucum_units_outside_ps3_16_cite_ucum(key: str) -> None:
    assert "UCUM" in CONCEPTS[key].source, CONCEPTS[key].source


@pytest.mark.parametrize("key", _OUTSIDE_PS316)
def test_codes_outside_ps3_16_name_their_published_source(key: str) -> None:
    concept = CONCEPTS[key]
    # "SNOMED CT <code> |<fully specified name>|; <where it was checked>"
    assert concept.source.startswith(f"SNOMED CT {concept.value} |"), concept.source
    assert ";" in concept.source or " as " in concept.source, f"{key}: source names no published reference"
    assert concept.is_finding, f"{key}: only finding concepts may come from outside PS3.16"


def test_every_snomed_code_has_a_source() -> None:
    snomed = [c for c in CONCEPTS.values() if c.scheme == "SCT"]
    assert len(snomed) >= 25
    for concept in snomed:
        assert concept.source.strip(), concept


def test_chest_labels_all_have_finding_concepts() -> None:
    assert len(codes.CHESTXRAY14_LABELS) == 14 and len(codes.FOUR_CLASS_LABELS) == 4
    for label in (*codes.CHESTXRAY14_LABELS, *codes.FOUR_CLASS_LABELS):
        assert CONCEPTS[label].is_finding, label
        assert finding_concept(label).meaning == CONCEPTS[label].meaning
    # Hiatal hernia (ChestX-ray14's meaning), pulmonary oedema, pleural effusion.
    assert finding_concept("hernia").value == "84089009"
    assert finding_concept("edema").value == "19242006"
    assert finding_concept("Effusion").value == finding_concept("pleural_effusion").value == "60046008"
    assert codes.display_name("pleural_thickening") == "Pleural thickening"
    for level, key in codes.TRIAGE_KEYS.items():
        assert CONCEPTS[key].scheme == "99AINODE", level


def test_no_two_keys_share_a_code() -> None:
    pairs = [(c.value, c.scheme) for c in CONCEPTS.values()]
    assert len(pairs) == len(set(pairs))


def test_known_triplets() -> None:
    assert (code("image_view").value, code("image_view").scheme_designator) == ("111031", "DCM")
    assert code("image_view").meaning == "Image View"
    processing = code("processing_algorithm")
    assert (processing.value, processing.scheme_designator, processing.meaning) == (
        "Newcode1",
        "99IHE",
        "Processing Algorithm",
    )
    assert code("no_units").value == "1" and code("no_units").scheme_designator == "UCUM"
    # 111047 is the mammography "Probability of cancer": not what we measure.
    assert code("probability").value != "111047"


def test_view_positions_map_to_dx_views() -> None:
    assert VIEW_POSITION_KEYS["PA"] == "postero_anterior"
    assert VIEW_POSITION_KEYS["LL"] == "left_lateral"
    for key in VIEW_POSITION_KEYS.values():
        assert "4010" in CONCEPTS[key].source


def test_unknown_keys_and_labels_fail_clearly() -> None:
    with pytest.raises(KeyError, match="no coded concept 'nope'"):
        code("nope")
    with pytest.raises(KeyError, match="finding label 'frontal'"):
        finding_concept("frontal")  # a view, not a finding
    assert finding_concept("pneumothorax").value == "36118008"
    assert key_for("111031", "DCM") == "image_view"
    assert key_for("111031", "SCT") is None


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        CONCEPTS["x"] = CONCEPTS["image_view"]  # type: ignore[index]


def _code_items(ds: Dataset, path: str = "") -> Iterator[tuple[str, Dataset]]:
    """Every Code Sequence item anywhere in ``ds`` (content tree, units, purposes of reference)."""
    if "CodeValue" in ds and "CodingSchemeDesignator" in ds:
        yield path, ds
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _code_items(item, f"{path}/{elem.keyword}[{i}]")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_code_in_our_srs_comes_from_the_table(variant: str) -> None:
    sr, _ = build_variant(variant)
    seen = 0
    for path, item in _code_items(sr):
        seen += 1
        key = key_for(str(item.CodeValue), str(item.CodingSchemeDesignator))
        assert key is not None, (
            f"{variant}: code ({item.CodeValue}, {item.CodingSchemeDesignator}, "
            f"{item.CodeMeaning!r}) at {path} is not in sr_writer.codes.CONCEPTS"
        )
        assert item.CodeMeaning == CONCEPTS[key].meaning, f"{variant}: {path} meaning differs from the table"
    assert seen >= 20, f"{variant}: only {seen} codes found; the walk is not reaching the content tree"
