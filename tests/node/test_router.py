"""Routing rules: conditions, combinators, loop prevention, the shipped rules file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence

from node.errors import ConfigError
from node.router import (
    OWN_MANUFACTURER,
    RoutingConfig,
    check_references,
    format_route_table,
    is_own_or_result_object,
    load_routing,
    parse_routing,
    read_header,
    route,
)

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "config" / "routing.yaml"


def _dataset(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _one_rule(match: dict[str, Any], **extra: Any) -> RoutingConfig:
    return parse_routing({"rules": [{"name": "r", "pipeline": "p", "match": match, **extra}]})


def _matches(match: dict[str, Any], ds: Dataset) -> bool:
    return route(ds, _one_rule(match)).pipeline == "p"


def _config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_routing(data, source="routing.yaml")
    return str(info.value)


# --- conditions -------------------------------------------------------------


def test_equals_strips_padding_and_is_case_sensitive() -> None:
    ds = _dataset(BodyPartExamined="CHEST ")
    assert _matches({"attribute": "BodyPartExamined", "equals": "CHEST"}, ds)
    assert not _matches({"attribute": "BodyPartExamined", "equals": "chest"}, ds)


def test_equals_with_a_number_compares_numerically() -> None:
    ds = _dataset(SeriesNumber="0003", SliceThickness="1.50")
    assert _matches({"attribute": "SeriesNumber", "equals": 3}, ds)
    assert _matches({"attribute": "SliceThickness", "equals": 1.5}, ds)
    assert not _matches({"attribute": "SliceThickness", "equals": 2}, ds)


def test_one_of() -> None:
    assert _matches({"attribute": "Modality", "one_of": ["CR", "DX"]}, _dataset(Modality="DX"))
    assert not _matches({"attribute": "Modality", "one_of": ["CR", "DX"]}, _dataset(Modality="CT"))


def test_regex_searches_anywhere_unless_anchored() -> None:
    ds = _dataset(StudyDescription="Rö Thorax pa")
    assert _matches({"attribute": "StudyDescription", "regex": "(?i)thorax"}, ds)
    assert not _matches({"attribute": "StudyDescription", "regex": "(?i)^thorax"}, ds)


def test_range_is_inclusive_and_bounds_are_optional() -> None:
    ds = _dataset(SliceThickness="3")
    assert _matches({"attribute": "SliceThickness", "range": {"min": 3, "max": 5}}, ds)
    assert _matches({"attribute": "SliceThickness", "range": {"max": 3}}, ds)
    assert not _matches({"attribute": "SliceThickness", "range": {"min": 3.1}}, ds)
    not_a_number = _dataset(StudyDescription="chest")
    assert not _matches({"attribute": "StudyDescription", "range": {"min": 0}}, not_a_number)


def test_present_true_and_false() -> None:
    with_agent = _dataset(ContrastBolusAgent="ISOVUE")
    assert _matches({"attribute": "ContrastBolusAgent", "present": True}, with_agent)
    assert not _matches({"attribute": "ContrastBolusAgent", "present": False}, with_agent)
    assert _matches({"attribute": "ContrastBolusAgent", "present": False}, _dataset())


def test_missing_or_empty_attribute_matches_only_present_false() -> None:
    empty = _dataset(BodyPartExamined="")  # type 2 attribute sent without a value
    for ds in (_dataset(), empty):
        assert not _matches({"attribute": "BodyPartExamined", "equals": ""}, ds)
        assert not _matches({"attribute": "BodyPartExamined", "regex": ".*"}, ds)
        assert not _matches({"attribute": "BodyPartExamined", "one_of": ["CHEST"]}, ds)
        assert not _matches({"attribute": "BodyPartExamined", "present": True}, ds)
        assert _matches({"attribute": "BodyPartExamined", "present": False}, ds)


def test_multi_valued_attribute_matches_when_any_value_matches() -> None:
    ds = _dataset(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert _matches({"attribute": "ImageType", "equals": "LOCALIZER"}, ds)
    assert _matches({"attribute": "ImageType", "regex": "^LOCAL"}, ds)
    assert not _matches({"attribute": "ImageType", "equals": "AXIAL"}, ds)
    assert _matches({"not": {"attribute": "ImageType", "equals": "AXIAL"}}, ds)


def test_attribute_given_as_tag() -> None:
    ds = _dataset(ViewPosition="PA")
    assert _matches({"attribute": "0018,5101", "equals": "PA"}, ds)
    assert _matches({"attribute": "(0018,5101)", "equals": "PA"}, ds)


# --- combinators ------------------------------------------------------------


def test_all_any_not_and_nesting() -> None:
    match = {
        "all": [
            {"attribute": "Modality", "one_of": ["CR", "DX"]},
            {
                "any": [
                    {"attribute": "BodyPartExamined", "regex": "(?i)^chest"},
                    {
                        "all": [
                            {"attribute": "BodyPartExamined", "present": False},
                            {"attribute": "ViewPosition", "one_of": ["PA", "AP"]},
                        ]
                    },
                ]
            },
            {"not": {"attribute": "StudyDescription", "regex": "(?i)spine"}},
        ]
    }
    assert _matches(match, _dataset(Modality="CR", BodyPartExamined="CHEST"))
    assert _matches(match, _dataset(Modality="DX", ViewPosition="AP"))
    assert not _matches(match, _dataset(Modality="DX", BodyPartExamined="HAND", ViewPosition="PA"))
    assert not _matches(match, _dataset(Modality="CT", BodyPartExamined="CHEST"))
    assert not _matches(match, _dataset(Modality="CR", BodyPartExamined="CHEST", StudyDescription="T-Spine"))


def test_first_enabled_matching_rule_wins() -> None:
    config = parse_routing(
        {
            "rules": [
                {"name": "no-localizers", "pipeline": None, "match": {"attribute": "ImageType", "equals": "LOCALIZER"}},
                {
                    "name": "old-ct",
                    "pipeline": "ct_old",
                    "enabled": False,
                    "match": {"attribute": "Modality", "equals": "CT"},
                },
                {
                    "name": "ct",
                    "pipeline": "ct_new",
                    "destinations": ["pacs"],
                    "match": {"attribute": "Modality", "equals": "CT"},
                },
                {"name": "ct-again", "pipeline": "ct_other", "match": {"attribute": "Modality", "equals": "CT"}},
            ]
        }
    )
    decision = route(_dataset(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]), config)
    assert (decision.pipeline, decision.rule, decision.destinations) == ("ct_new", "ct", ("pacs",))
    assert decision.reason == "matched rule 'ct'"
    scout = route(_dataset(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), config)
    assert (scout.pipeline, scout.rule) == (None, "no-localizers")
    assert "analyses nothing" in scout.reason


def test_disabled_rule_never_routes_but_is_named_in_the_reason() -> None:
    config = _one_rule({"attribute": "Modality", "equals": "CT"}, enabled=False)
    decision = route(_dataset(Modality="CT"), config)
    assert decision.pipeline is None and decision.rule is None
    assert "disabled rule 'r' would match" in decision.reason
    assert route(_dataset(Modality="MR"), config).reason == "no rule matched"


# --- loop prevention ----------------------------------------------------------


@pytest.mark.parametrize("modality", ["SR", "SEG", "PR", "KO"])
def test_result_modalities_are_never_routed(modality: str) -> None:
    config = _one_rule({"attribute": "Modality", "present": True})
    decision = route(_dataset(Modality=modality), config)
    assert decision.pipeline is None and decision.rule is None
    assert decision.reason == f"result object not routed (loop prevention): Modality {modality}"


@pytest.mark.parametrize(
    ("sop_class", "name"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection Document Storage"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    ],
)
def test_result_sop_classes_are_never_routed_even_with_a_wrong_modality(sop_class: str, name: str) -> None:
    ds = _dataset(Modality="OT", SOPClassUID=sop_class)
    assert is_own_or_result_object(ds) == f"result object not routed (loop prevention): SOP class {name}"


def test_own_manufacturer_is_never_routed() -> None:
    config = _one_rule({"attribute": "Modality", "equals": "SC"})
    decision = route(_dataset(Modality="SC", Manufacturer=OWN_MANUFACTURER), config)
    assert decision.pipeline is None
    assert "Manufacturer is 'ainode'" in decision.reason
    assert route(_dataset(Modality="SC", Manufacturer="Philips"), config).pipeline == "p"


def test_own_contributing_equipment_is_never_routed() -> None:
    purpose = _dataset(CodeValue="Newcode1", CodingSchemeDesignator="99IHE", CodeMeaning="Processing Algorithm")
    ours = _dataset(Manufacturer="ainode", PurposeOfReferenceCodeSequence=DicomSequence([purpose]))
    theirs = _dataset(Manufacturer="Other AI", PurposeOfReferenceCodeSequence=DicomSequence([purpose]))
    ds = _dataset(Modality="SC", Manufacturer="Siemens", ContributingEquipmentSequence=DicomSequence([theirs]))
    assert is_own_or_result_object(ds) is None
    ds.ContributingEquipmentSequence.append(ours)
    assert "Contributing Equipment names 'ainode'" in (is_own_or_result_object(ds) or "")


# --- validation messages ------------------------------------------------------


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("rules:\n  - name: a\n    match: {attribute: Modality, equals: [CR\n")
    with pytest.raises(ConfigError) as info:
        load_routing(path)
    assert str(path) in str(info.value) and "invalid YAML at line" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read routing rules"):
        load_routing(tmp_path / "absent.yaml")


def test_unknown_keyword_names_rule_key_and_suggests() -> None:
    message = _config_error(
        {
            "rules": [
                {"name": "ok", "pipeline": "p", "match": {"attribute": "Modality", "equals": "CT"}},
                {
                    "name": "chest",
                    "pipeline": "cxr",
                    "match": {
                        "all": [
                            {"attribute": "Modality", "equals": "CR"},
                            {"attribute": "BodyPartExamine", "equals": "CHEST"},
                        ]
                    },
                },
            ]
        }
    )
    assert "routing.yaml: rule 'chest' (rule 2), key match.all[1].attribute" in message
    assert "unknown DICOM keyword 'BodyPartExamine'; did you mean 'BodyPartExamined'?" in message
    assert "example: attribute: BodyPartExamined" in message


def test_bad_regex_fails_at_load_with_rule_and_key() -> None:
    message = _config_error(
        {
            "rules": [
                {
                    "name": "chest",
                    "pipeline": "cxr",
                    "match": {
                        "any": [
                            {"attribute": "StudyDescription", "regex": "(?i)(chest"},
                        ]
                    },
                }
            ]
        }
    )
    assert "rule 'chest' (rule 1), key match.any[0].regex: invalid regular expression '(?i)(chest'" in message
    assert 'example: regex: "(?i)^(chest|thorax)"' in message


def test_unknown_condition_names_rule_and_key() -> None:
    message = _config_error(
        {
            "rules": [
                {
                    "name": "ct",
                    "pipeline": "ct_pe",
                    "match": {"not": {"attribute": "ImageType", "contains": "LOCALIZER"}},
                }
            ]
        }
    )
    assert "rule 'ct' (rule 1), key match.not.contains: unknown condition 'contains'" in message


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"attribute": "Modality"}, "needs exactly one of equals, one_of, regex, range, present (found: none)"),
        ({"attribute": "Modality", "equals": "CT", "regex": "CT"}, "(found: equals, regex)"),
        ({"attribute": "Modality", "equals": False}, "put the value in quotes"),
        ({"attribute": "SliceThickness", "range": {"min": 5, "max": 1}}, "min (5) is greater than max (1)"),
        ({"attribute": "SliceThickness", "range": {}}, "give at least one of min and max"),
        ({"attribute": "ContributingEquipmentSequence", "equals": "x"}, "is a sequence"),
        ({"all": []}, "key match.all: expected a non-empty list"),
        ({"all": [{"attribute": "Modality", "equals": "CT"}], "any": []}, "'all' must stand alone"),
        ({"everything": True}, "unknown key 'everything'"),
    ],
)
def test_malformed_conditions_are_explained(match: dict[str, Any], expected: str) -> None:
    message = _config_error({"rules": [{"name": "x", "pipeline": "p", "match": match}]})
    assert message.startswith("routing.yaml: rule 'x' (rule 1), key match")
    assert expected in message


def test_rule_level_mistakes_are_explained() -> None:
    typo = _config_error(
        {
            "rules": [
                {
                    "name": "x",
                    "pipeline": "p",
                    "destination": ["pacs"],
                    "match": {"attribute": "Modality", "equals": "CT"},
                }
            ]
        }
    )
    assert "key destination: unknown key 'destination'; did you mean 'destinations'?" in typo
    twice = _config_error(
        {
            "rules": [
                {"name": "x", "pipeline": "p", "match": {"attribute": "Modality", "equals": "CT"}},
                {"name": "x", "pipeline": "q", "match": {"attribute": "Modality", "equals": "MR"}},
            ]
        }
    )
    assert "rule name 'x' is used twice" in twice
    no_pipeline = _config_error({"rules": [{"name": "x", "match": {"attribute": "Modality", "equals": "CT"}}]})
    assert "rule 'x' (rule 1), key pipeline: Field required" in no_pipeline
    assert "expected a mapping with a top-level 'rules' list" in _config_error({"rule": []})


def test_check_references_names_unknown_pipeline_and_destination() -> None:
    config = _one_rule({"attribute": "Modality", "equals": "CR"}, destinations=["pacs", "archive"])
    check_references(config, pipelines={"p"}, destinations={"pacs", "archive"})
    with pytest.raises(ConfigError) as info:
        check_references(config, pipelines={"cxr"}, destinations={"pacs"})
    assert "rule 'r' (rule 1), key pipeline: unknown pipeline 'p'; known pipelines: cxr" in str(info.value)
    assert "unknown destination 'archive'" in str(info.value)


# --- the shipped rules, on real files ------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> RoutingConfig:
    return load_routing(SHIPPED_RULES)


def _header(name: str) -> Dataset:
    return read_header(Path(get_testdata_file(name)))


def test_shipped_rules_route_real_chest_cr_to_cxr(shipped: RoutingConfig) -> None:
    # RG1_UNCR: CR, BodyPartExamined CHEST, StudyDescription THORAX, ViewPosition PA.
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):  # uncompressed and JPEG 2000
        decision = route(_header(name), shipped)
        assert (decision.pipeline, decision.rule, decision.destinations) == ("cxr", "chest-radiograph", ())


def test_shipped_rules_leave_other_radiographs_and_ct_alone(shipped: RoutingConfig) -> None:
    assert route(_header("RG3_UNCR.dcm"), shipped).pipeline is None  # CR of a tibia
    ct = route(_header("CT_small.dcm"), shipped)
    assert (ct.pipeline, ct.rule, ct.reason) == (None, None, "no rule matched")


def test_shipped_rules_skip_sr_with_loop_reason(shipped: RoutingConfig) -> None:
    decision = route(_header("reportsi.dcm"), shipped)
    assert decision.pipeline is None
    assert decision.reason == "result object not routed (loop prevention): Modality SR"


def test_shipped_cxr_rule_reads_old_file_without_preamble_or_image_type(shipped: RoutingConfig, tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    del ds.ImageType
    del ds.BodyPartExamined  # falls back to the description
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    old = tmp_path / "old.dcm"
    ds.save_as(old, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert old.read_bytes()[:4] == b"\x08\x00\x05\x00"  # starts with (0008,0005), no DICM
    assert route(read_header(old), shipped).pipeline == "cxr"


@pytest.mark.parametrize(
    ("attributes", "pipeline"),
    [
        ({"Modality": "DX", "ViewPosition": "PA"}, "cxr"),  # no body part: the projection decides
        ({"Modality": "DX", "SeriesDescription": "Tórax AP"}, "cxr"),
        ({"Modality": "CR", "ProtocolName": "CXR portable", "BodyPartExamined": "PORTABLE"}, "cxr"),
        ({"Modality": "DX", "BodyPartExamined": "HAND", "ViewPosition": "PA"}, None),
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "StudyDescription": "Thoracic spine"}, None),
        ({"Modality": "DX", "BodyPartExamined": "CHEST", "PresentationIntentType": "FOR PRESENTATION"}, "cxr"),
        ({"Modality": "DX", "BodyPartExamined": "CHEST", "PresentationIntentType": "FOR PROCESSING"}, None),
    ],
)
def test_shipped_cxr_rule_variants(shipped: RoutingConfig, attributes: dict[str, str], pipeline: str | None) -> None:
    ds = _dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1", **attributes)  # DX for presentation
    assert route(ds, shipped).pipeline == pipeline


AXIAL = ["ORIGINAL", "PRIMARY", "AXIAL"]


@pytest.mark.parametrize(
    ("attributes", "pipeline"),
    [
        # CT pulmonary angiography, by contrast agent or by protocol name (English, German LAE).
        ({"BodyPartExamined": "CHEST", "ContrastBolusAgent": "ISOVUE"}, "ct_pe"),
        ({"StudyDescription": "CTA Pulmonary Embolism"}, "ct_pe"),
        ({"StudyDescription": "CT Thorax LAE", "BodyPartExamined": "CHEST"}, "ct_pe"),
        ({"SeriesDescription": "CTPA 1.0 B30f"}, "ct_pe"),
        ({"StudyDescription": "CT chest with contrast"}, "ct_pe"),
        # A chest CT without contrast is not a CTPA.
        ({"BodyPartExamined": "CHEST", "StudyDescription": "CT chest low dose"}, None),
        # Abdomen, abdomen-pelvis, lumbar spine, and chest-abdomen-pelvis staging (venous phase) -> lumbar.
        ({"BodyPartExamined": "ABDOMEN"}, "ct_lumbar"),
        ({"StudyDescription": "CT Abdomen/Pelvis w contrast", "ContrastBolusAgent": "OMNIPAQUE"}, "ct_lumbar"),
        ({"BodyPartExamined": "LSPINE"}, "ct_lumbar"),
        (
            {"StudyDescription": "CT Chest Abdomen Pelvis", "BodyPartExamined": "CHEST", "ContrastBolusAgent": "X"},
            "ct_lumbar",
        ),
        # Scouts, reformats and projections are never analysed.
        ({"BodyPartExamined": "ABDOMEN", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, None),
        ({"BodyPartExamined": "ABDOMEN", "ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"]}, None),
        ({"StudyDescription": "CTPA", "SeriesDescription": "Sag MPR 3mm"}, None),
        ({"StudyDescription": "CTPA", "SeriesDescription": "COR 5mm"}, None),
        ({"StudyDescription": "CTPA", "SeriesDescription": "MIP 10 mm"}, None),
    ],
)
def test_shipped_ct_rules(shipped: RoutingConfig, attributes: dict[str, object], pipeline: str | None) -> None:
    values: dict[str, object] = {"Modality": "CT", "ImageType": AXIAL, **attributes}
    ds = _dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", **values)
    assert route(ds, shipped).pipeline == pipeline, route(ds, shipped).reason


# --- ainode route ---------------------------------------------------------------


def test_format_route_table_on_a_folder(shipped: RoutingConfig, tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), tmp_path / "chest.dcm")
    (tmp_path / "nested").mkdir()
    shutil.copy(get_testdata_file("reportsi.dcm"), tmp_path / "nested" / "report.dcm")
    (tmp_path / "notes.txt").write_text("not an image\n" * 50)
    table, exit_code = format_route_table([tmp_path], shipped)
    lines = table.splitlines()
    assert lines[0].split() == ["FILE", "PIPELINE", "RULE", "REASON"]
    rows = {Path(line.split()[0]).name: line.split(None, 3) for line in lines[1:]}
    assert set(rows) == {"chest.dcm", "report.dcm", "notes.txt"}
    assert rows["chest.dcm"][1:] == ["cxr", "chest-radiograph", "matched rule 'chest-radiograph'"]
    assert rows["report.dcm"][1:3] == ["-", "-"] and "loop prevention" in rows["report.dcm"][3]
    assert rows["notes.txt"][3].startswith("ERROR: not a DICOM file")
    assert exit_code == 1


def test_format_route_table_exit_codes(shipped: RoutingConfig, tmp_path: Path) -> None:
    good = tmp_path / "chest.dcm"
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), good)
    assert format_route_table([good], shipped)[1] == 0
    table, code = format_route_table([tmp_path / "missing.dcm"], shipped)
    assert code == 1 and "ERROR: cannot read: No such file or directory" in table
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    assert format_route_table([empty], shipped) == ("no files found", 1)


def test_own_manufacturer_is_what_sr_writer_writes() -> None:
    from sr_writer import MANUFACTURER

    assert MANUFACTURER == OWN_MANUFACTURER
