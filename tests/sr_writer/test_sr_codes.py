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
#: Every concept of the table that pydicom's copy of PS3.16 holds, whatever its source says.
_IN_PS316 = sorted(k for k, c in CONCEPTS.items() if (c.scheme, c.value) in _STANDARD)
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


#: Codes whose PS3.16 full name shares no word with the meaning PS3.16's context groups give them, yet
#: names the same concept (checked by hand): the full-name check below lets them through.
_SAME_CONCEPT: dict[tuple[str, str], str] = {
    ("SCT", "51282000"): "Vertebra in CIDs 6102, 7151, 7192; full name 'Bone structure of spine'",
}


def _words(text: str) -> set[str]:
    """The words of a meaning, compared by their first five letters (``absent``/``absence``)."""
    stop = {"of", "the", "and", "or", "in", "by", "structure", "body", "finding", "disorder", "qualifier", "value"}
    return {w[:5] for w in re.findall(r"[a-z0-9]+", text.lower().replace("-", "")) if w not in stop}


@pytest.mark.parametrize("key", _IN_PS316)
def test_every_code_the_standard_holds_has_its_meaning(key: str) -> None:
    """A code of the table that PS3.16 holds (in a CID or its SNOMED table) means what the standard says."""
    concept = CONCEPTS[key]
    entries = _STANDARD[(concept.scheme, concept.value)]
    meanings = {m.lower() for m, _ in entries} | {re.sub(r" \([a-z ]+\)$", "", m).lower() for m, _ in entries}
    assert concept.meaning.lower() in meanings, f"{key}: {concept.meaning!r} is not the standard's {sorted(meanings)}"
    # PS3.16's SNOMED table (Table O-1: entries in no CID) gives a concept's full name; a code whose full
    # name is another concept (287272002 is "Enlarged septal foramen of heart", though CID 12248 calls
    # it Cardiomegaly) is the wrong code whatever a context group labels it.
    for full_name, cids in entries:
        if (concept.scheme, concept.value) in _SAME_CONCEPT:
            break
        if not cids and re.search(r"\([a-z ]+\)$", full_name):
            assert _words(concept.meaning) & _words(full_name), (
                f"{key}: ({concept.value}, {concept.scheme}) is {full_name!r} in PS3.16, not {concept.meaning!r}"
            )


def test_codes_found_wrong_in_review_stay_out() -> None:
    """Issue 20's review: these codes name other concepts, or concepts of another value set."""
    assert CONCEPTS["cardiomegaly"].value == "8186001"
    assert CONCEPTS["indeterminate"].value == "373068000"  # CID 240, not CID 4220's 82334004
    assert key_for("287272002", "SCT") is None
    assert key_for("78381009", "SCT") is None  # pleural thickening: never confirmed
    assert key_for("82334004", "SCT") is None
    # Chronic and acute-and-chronic PE are PE with CID 6130 modifiers, which the table holds.
    assert (CONCEPTS["chronic"].value, CONCEPTS["acute_onset"].value) == ("90734009", "385315009")


def test_private_concepts_say_why_and_use_a_declared_scheme() -> None:
    private = {k: c for k, c in CONCEPTS.items() if c.scheme.startswith("99")}
    assert private, "no private concept: the check would pass on nothing"
    for key, concept in private.items():
        assert concept.scheme in codes.PRIVATE_SCHEMES, key
        if concept.scheme == "99AINODE":  # ours: why no standard code serves
            reason = concept.source.removeprefix("private: ").strip()
            assert concept.source.startswith("private: ") and reason, f"{key}: {concept.source!r}"
        else:  # another organisation's: the document that defines it
            assert codes.PRIVATE_SCHEMES[concept.scheme].responsible_organization.split()[0] in concept.source, key


def test_a_private_scheme_that_is_not_declared_is_refused() -> None:
    with pytest.raises(ValueError, match="99NOPE"):
        codes.Concept("X", "99NOPE", "x", "private: test")


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


def _fat_sites(ds: Dataset) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Every content item whose coded value is Fat, with the (value, scheme) of its concept modifiers."""
    for item in ds.get("ContentSequence", []):
        value = item.get("ConceptCodeSequence")
        if value and (value[0].CodeValue, value[0].CodingSchemeDesignator) == (CONCEPTS["fat"].value, "SCT"):
            modifiers = [
                (str(m.ConceptCodeSequence[0].CodeValue), str(m.ConceptCodeSequence[0].CodingSchemeDesignator))
                for m in item.get("ContentSequence", [])
                if m.get("RelationshipType") == "HAS CONCEPT MOD" and "ConceptCodeSequence" in m
            ]
            yield str(value[0].CodeValue), modifiers
        yield from _fat_sites(item)


def test_visceral_fat_is_one_encoding_in_the_sr_and_the_seg() -> None:
    # Imported here: test_ct_objects imports this module (_code_items), a cycle at module level.
    import numpy as np

    from core.findings import AlgorithmInfo
    from sr_writer import build_lumbar_report, build_tissue_segmentation
    from tests.sr_writer.scenarios import series
    from tests.sr_writer.test_ct_objects import ct_series, headers, lumbar_result

    slices = ct_series(14)
    sr = build_lumbar_report(lumbar_result(slices), headers(slices), params=series(994))
    masks = {k: np.zeros((64, 64), bool) for k in ("muscle", "subcutaneous_fat", "visceral_fat")}
    seg = build_tissue_segmentation(slices[6], masks, AlgorithmInfo(name="ct-lumbar", version="1"), series(996))

    [visceral] = [d for d in seg.SegmentSequence if d.SegmentLabel == "visceral fat"]
    kind = visceral.SegmentedPropertyTypeCodeSequence[0]
    seg_encoding = (
        str(kind.CodeValue),
        [(str(m.CodeValue), str(m.CodingSchemeDesignator)) for m in kind.SegmentedPropertyTypeModifierCodeSequence],
    )
    internal = (CONCEPTS["internal"].value, "SCT")
    assert seg_encoding == (CONCEPTS["fat"].value, [internal])
    assert list(_fat_sites(sr)) == [seg_encoding], "the SR's visceral fat is not Fat + Internal as in the SEG"
