"""Valid results from invalid sources: every attribute copied from a source is checked against its VR.

Sources here carry the malformations real vendor files have (ages without unit,
ISO dates, impossible times, Latin-1 names without a character set, bytes
invalid in the declared one, over-long strings, two values where one is
allowed, an invalid UID in a sequence), written as raw bytes so the files hold
exactly what a modality would send. The writers must then produce objects that
``dciodvfy`` accepts, correct what the standard allows, drop the rest, and say
what they dropped by keyword and reason, never by value.

Also here: probabilities to 3 significant digits and DEMO in Manufacturer's
Model Name of every object made with demo weights (issue 14).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from sqlalchemy import select

from core.findings import AlgorithmInfo, ImageResult, SeriesResult, ViewResult
from sr_writer import (
    build_key_object_selection,
    build_lumbar_report,
    build_measurement_report,
    build_pe_report,
    build_presentation_state,
    build_secondary_capture,
    build_slice_labels,
    build_tissue_segmentation,
    level_labels,
    pe_labels,
)
from sr_writer.source_attributes import (
    SourceAttributeIssue,
    clean_source,
    describe_issues,
    probability_text,
    record_issues,
    significant,
    source_attribute_issues,
)
from tests.helpers import assert_dciodvfy_clean, dciodvfy, rg1_uncr_path
from tests.sr_writer.scenarios import DEMO_DETECTOR, UID_ROOT, cxr_result, read_rg1_header, series, write
from tests.sr_writer.test_ct_objects import LEVELS, PE_MODEL, ct_series, headers, lumbar_result, pe_result


def set_raw(ds: Dataset, keyword: str, value: bytes) -> None:
    """Put ``value`` into ``ds`` as the bytes a file would hold (padded to even length), unchecked by pydicom."""
    tag = Tag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag)
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _source_with(values: dict[str, bytes | None], charset: str | None = "keep") -> Dataset:
    """The real CR header with raw malformed values (None removes the attribute)."""
    ds = read_rg1_header()
    if charset != "keep":
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
        ds = reread(ds)  # else pydicom would re-encode the raw values below into the new character set
    for keyword, value in values.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            set_raw(ds, keyword, value)
    return reread(ds)


def reread(ds: Dataset, pixels: bool = False) -> Dataset:
    """``ds`` written and read back as the node reads a received file (pydicom takes the character set from it)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()), stop_before_pixels=not pixels)


# --- One malformation at a time ---------------------------------------------------------

# (keyword, raw value, charset or "keep", expected value in the cleaned copy (None: absent), reason, corrected)
CASES = [
    ("PatientAge", b"62", "keep", "062Y", "AS without unit, read as years", True),
    ("PatientAge", b"062", "keep", "062Y", "AS without unit, read as years", True),
    ("PatientAge", b"62 Y", "keep", "062Y", "AS not in the nnnU form", True),
    ("PatientAge", b"62y", "keep", "062Y", "AS not in the nnnU form", True),
    ("PatientAge", b"sixty", "keep", None, "invalid AS", False),
    ("PatientAge", b"062Y\\063Y", "keep", None, "2 values, VM 1", False),
    ("StudyDate", b"2020.01.02", "keep", "20200102", "ACR-NEMA DA form", True),
    ("StudyDate", b"2020-01-02", "keep", "", "invalid DA", False),
    ("StudyDate", b"20201301", "keep", "", "invalid DA", False),
    ("PatientBirthDate", b"20210229", "keep", "", "invalid DA", False),
    ("StudyTime", b"25:00", "keep", "", "invalid TM", False),
    ("StudyTime", b"12:3", "keep", "", "invalid TM", False),
    ("StudyTime", b"2400", "keep", "", "invalid TM", False),
    ("StudyTime", b"12:30:15", "keep", "123015", "ACR-NEMA TM form", True),
    ("PatientBirthTime", b"1261", "keep", None, "invalid TM", False),
    ("PatientSex", b"MALE", "keep", "", "not an enumerated value (CS)", False),
    ("PatientSex", b"M\\F", "keep", "", "2 values, VM 1", False),
    ("PatientID", b"A1\\A2", "keep", "", "2 values, VM 1", False),
    ("StudyDescription", b"A" * 70, "keep", None, "longer than 64 bytes (LO)", False),
    ("AccessionNumber", b"X" * 20, "keep", "", "longer than 16 bytes (SH)", False),
    ("ReferringPhysicianName", b"A" * 70 + b"^B", "keep", "", "longer than 64 bytes (PN)", False),
    ("PatientName", b"A^B^C^D^E^F", "keep", "", "more than 5 components (PN)", False),
    ("PatientName", b"M\xfcller^J\xf6rg", None, "", "characters outside the default character repertoire (PN)", False),
    ("PatientName", b"Smith\x85^John", "ISO_IR 100", "", "control characters (PN)", False),
    ("PatientName", b"M\xc3\x28ller^Hans", "ISO_IR 192", "", "bytes not valid in the character set (PN)", False),
    # 45 characters but 87 bytes in UTF-8: dciodvfy counts bytes.
    ("PatientName", ("Ü" * 40 + "^Jörg").encode(), "ISO_IR 192", "", "longer than 64 bytes (PN)", False),
    ("PatientName", ("Müller" * 6 + "^Jörg").encode(), "ISO_IR 192", "Müller" * 6 + "^Jörg", None, False),
    ("StudyDescription", b"CHEST\x07PA", "keep", None, "control characters (LO)", False),
    ("PatientSize", b"1,75", "keep", None, "invalid DS", False),
    ("PatientWeight", b"80kg", "keep", None, "invalid DS", False),
    ("PatientSize", b"1.75", "keep", "1.75", None, False),
    ("PatientName", b"M\xfcller^J\xf6rg", "ISO_IR 100", "Müller^Jörg", None, False),
    ("PatientAge", b"062Y", "keep", "062Y", None, False),
    ("OtherPatientNames", b"A^B\\C^D", "keep", ["A^B", "C^D"], None, False),
]


@pytest.mark.parametrize(
    "keyword, raw, charset, expected, reason, corrected", CASES, ids=[f"{c[0]}-{c[1][:12]!r}-{c[2]}" for c in CASES]
)
def test_each_malformation_is_corrected_or_dropped_and_named_without_its_value(
    keyword: str, raw: bytes, charset: str | None, expected: object, reason: str | None, corrected: bool
) -> None:
    source = _source_with({keyword: raw}, charset)
    before = copy.deepcopy(source)
    cleaned, issues = clean_source(source)

    if expected is None:
        assert keyword not in cleaned
    else:
        value = cleaned[keyword].value
        shown = [str(v) for v in value] if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)
        assert shown == expected
    if reason is None:
        assert issues == []
    else:
        assert issues == [SourceAttributeIssue(keyword, reason, corrected=corrected)]
        # The reason names the attribute, never its value (values are patient data).
        text = describe_issues(issues)
        assert keyword in text and raw.decode("latin-1") not in text
    assert source_attribute_issues(cleaned) == issues
    # The source itself is not changed: the node still references it as it is.
    assert source[keyword].value == before[keyword].value


def test_missing_type2_attributes_are_added_empty_and_valid_ones_kept() -> None:
    source = _source_with({"PatientSex": None, "StudyID": None, "AccessionNumber": None})
    cleaned, issues = clean_source(source)
    assert issues == []
    assert cleaned.PatientSex == "" and cleaned.StudyID == "" and cleaned.AccessionNumber == ""
    assert cleaned.PatientName == source.PatientName and cleaned.StudyDate == source.StudyDate
    assert cleaned.SpecificCharacterSet == source.SpecificCharacterSet


def test_a_sequence_with_an_invalid_uid_in_an_item_is_dropped_whole() -> None:
    source = read_rg1_header()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID we mean to write
        item.ReferencedSOPInstanceUID = "1.2.03.4"
    source.ReferencedStudySequence = [item]
    source = reread(source)
    cleaned, issues = clean_source(source)
    assert "ReferencedStudySequence" not in cleaned
    assert issues == [
        SourceAttributeIssue("ReferencedStudySequence", "invalid ReferencedSOPInstanceUID in an item: invalid UI")
    ]
    assert "ReferencedStudySequence" in source


def test_a_sequence_item_with_an_unreadable_number_is_dropped_whole() -> None:
    source = read_rg1_header()
    item = Dataset()
    item.PatientID = "OTHER-1"
    set_raw(item, "PatientWeight", b"80kg")  # pydicom cannot convert it to a number at all
    source.OtherPatientIDsSequence = [item]
    cleaned, issues = clean_source(reread(source))
    assert "OtherPatientIDsSequence" not in cleaned
    assert issues == [SourceAttributeIssue("OtherPatientIDsSequence", "invalid PatientWeight in an item: invalid DS")]


def test_other_slices_are_checked_for_what_is_copied_from_each_and_copied_only_when_changed() -> None:
    from sr_writer.gsps import PR_COPIED_EACH

    valid = read_rg1_header()
    assert clean_source(valid, PR_COPIED_EACH, patient_study=False) == (valid, [])
    bad = _source_with({"WindowCenterWidthExplanation": b"W" * 65, "PatientAge": b"62"})
    cleaned, issues = clean_source(bad, PR_COPIED_EACH, patient_study=False)
    assert cleaned is not bad and "WindowCenterWidthExplanation" not in cleaned
    assert issues == [SourceAttributeIssue("WindowCenterWidthExplanation", "longer than 64 bytes (LO)")]
    assert cleaned.get_item("PatientAge").value == bad.get_item("PatientAge").value  # not this call's business


def test_an_unknown_character_set_is_dropped_and_only_ascii_text_kept() -> None:
    source = _source_with(
        {"SpecificCharacterSet": b"LATIN1", "PatientName": b"DOE^JANE", "StudyDescription": b"THORAX \xe9"}
    )
    cleaned, issues = clean_source(source)
    assert "SpecificCharacterSet" not in cleaned and cleaned.PatientName == "DOE^JANE"
    assert "StudyDescription" not in cleaned
    assert [str(i) for i in issues] == [
        "SpecificCharacterSet (unknown character set)",
        "StudyDescription (characters outside the default character repertoire (LO))",
    ]


def test_the_default_repertoire_said_explicitly_is_left_out(tmp_path: Path) -> None:
    source = _source_with({"PatientName": b"DOE^JOHN"}, "ISO_IR 6")
    cleaned, issues = clean_source(source)
    assert issues == [] and "SpecificCharacterSet" not in cleaned and cleaned.PatientName == "DOE^JOHN"
    # highdicom refuses "ISO_IR 6"; the SR is written without it.
    sr = build_measurement_report(cxr_result(source), [source], params=series(990))
    assert "SpecificCharacterSet" not in sr
    assert_dciodvfy_clean(write(sr, tmp_path, "sr"))


def test_iso_2022_names_are_kept_and_the_copy_says_utf8(tmp_path: Path) -> None:
    source = read_rg1_header()
    source.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    source = reread(source)
    set_raw(source, "PatientName", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")
    cleaned, issues = clean_source(reread(source))
    assert issues == []
    assert cleaned.SpecificCharacterSet == "ISO_IR 192"
    assert str(cleaned.PatientName) == "Yamada^Tarou=山田^太郎"
    sr = build_measurement_report(cxr_result(cleaned), [source], params=series(990))
    path = write(sr, tmp_path, "sr")
    assert_dciodvfy_clean(path)
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Yamada^Tarou=山田^太郎"


def test_cleaning_twice_keeps_the_first_issues_and_records_them_once() -> None:
    once, first = clean_source(_source_with({"PatientAge": b"62", "StudyTime": b"25:00"}))
    twice, second = clean_source(once, {"Laterality": "2"})
    assert second == first and twice.PatientAge == "062Y"
    result = Dataset()
    record_issues(result, [once, twice])
    assert source_attribute_issues(result) == first
    assert describe_issues(first) == (
        "source attributes dropped: StudyTime (invalid TM); "
        "source attributes corrected: PatientAge (AS without unit, read as years)"
    )
    assert describe_issues([]) == ""


# --- dciodvfy on results made from malformed sources ------------------------------------

#: Malformations combined per source (an attribute can be malformed one way at a time).
CR_VARIANTS: dict[str, tuple[dict[str, bytes | None], str | None]] = {
    "no-unit-iso-dates-latin1-without-charset": (
        {
            "PatientAge": b"62",
            "StudyDate": b"2020-01-02",
            "PatientBirthDate": b"20201301",
            "StudyTime": b"25:00",
            "PatientName": b"M\xfcller^J\xf6rg",
            "StudyDescription": b"A" * 70,
            "PatientID": b"A1\\A2",
            "PatientSize": b"1,75",
            "PatientSex": b"MALE",
            "WindowCenterWidthExplanation": b"WINDOW " * 10,
        },
        None,
    ),
    "padded-age-short-time-c1-bytes": (
        {
            "PatientAge": b"062",
            "StudyTime": b"12:3",
            "PatientName": b"Smith\x85^John",
            "AccessionNumber": b"X" * 20,
            "ReferringPhysicianName": b"A" * 70 + b"^B",
            "PatientWeight": b"80kg",
            "StudyID": b"1\\2",
        },
        "ISO_IR 100",
    ),
    "spaced-age-acr-nema-bad-utf8": (
        {
            "PatientAge": b"62 Y",
            "StudyDate": b"2020.01.02",
            "StudyTime": b"12:30:15",
            "PatientName": b"M\xc3\x28ller^Hans",
            "OtherPatientNames": b"A\x85^B",
            "Laterality": b"X",
            "StudyDescription": ("ÉPAULÉ " * 8).encode(),  # 56 characters, 72 bytes in UTF-8
        },
        "ISO_IR 192",
    ),
    "multiplicity": (
        {
            "PatientAge": b"062Y\\063Y",
            "PatientSex": b"M\\F",
            "PatientBirthDate": b"19600101\\19600102",
        },
        "keep",
    ),
}
CR_EXPECTED: dict[str, set[str]] = {
    "no-unit-iso-dates-latin1-without-charset": {
        "PatientAge",
        "StudyDate",
        "PatientBirthDate",
        "StudyTime",
        "PatientName",
        "StudyDescription",
        "PatientID",
        "PatientSize",
        "PatientSex",
        "WindowCenterWidthExplanation",
    },
    "padded-age-short-time-c1-bytes": {
        "PatientAge",
        "StudyTime",
        "PatientName",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientWeight",
        "StudyID",
    },
    "spaced-age-acr-nema-bad-utf8": {
        "PatientAge",
        "StudyDate",
        "StudyTime",
        "PatientName",
        "OtherPatientNames",
        "Laterality",
        "StudyDescription",
    },
    "multiplicity": {"PatientAge", "PatientSex", "PatientBirthDate"},
}


def _malformed_cr_file(folder: Path, variant: str) -> Path:
    """RG1 (a real CR) with pixels, its header malformed as ``variant`` says, saved as a modality would send it."""
    values, charset = CR_VARIANTS[variant]
    ds = pydicom.dcmread(rg1_uncr_path())
    if charset != "keep":
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
        ds = reread(ds, pixels=True)
    for keyword, value in values.items():
        if value is not None:
            set_raw(ds, keyword, value)
    path = folder / "malformed_cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("variant", list(CR_VARIANTS))
def test_cxr_sr_gsps_and_sc_from_a_malformed_cr_pass_dciodvfy(variant: str, tmp_path: Path) -> None:
    path = _malformed_cr_file(tmp_path, variant)
    assert dciodvfy(path).errors, "the malformed source should itself fail dciodvfy"
    header = pydicom.dcmread(path, stop_before_pixels=True)
    result = cxr_result(header, detector=DEMO_DETECTOR)

    sr = build_measurement_report(result, [header], params=series(990, institution_name="Test Hospital"))
    gsps = build_presentation_state(result, [header], params=series(991))
    sc = build_secondary_capture(result, pydicom.dcmread(path), params=series(992))
    for name, ds in (("sr", sr), ("gsps", gsps), ("sc", sc)):
        assert_dciodvfy_clean(write(ds, tmp_path, name))
        issues = source_attribute_issues(ds)
        named = {i.keyword for i in issues}
        # Laterality and the window are copied into presentation states and captures only.
        expected = CR_EXPECTED[variant] - ({"Laterality", "WindowCenterWidthExplanation"} if name == "sr" else set())
        assert named == expected, (name, issues)
        back = pydicom.dcmread(tmp_path / f"{name}.dcm")
        assert back.StudyInstanceUID == header.StudyInstanceUID
        if "PatientAge" in back and back.PatientAge:
            assert back.PatientAge == "062Y"


def test_ct_objects_from_a_malformed_series_pass_dciodvfy(tmp_path: Path) -> None:
    slices = ct_series(len(LEVELS))
    for number, ds in enumerate(slices):
        ds.SpecificCharacterSet = "ISO_IR 100"
        slices[number] = reread(ds, pixels=True)
    for ds in slices:  # every slice of the series carries the vendor's errors, as real series do
        set_raw(ds, "PatientAge", b"62")
        set_raw(ds, "StudyDate", b"2020-01-02")
        set_raw(ds, "StudyTime", b"12:3")
        set_raw(ds, "PatientName", b"Smith\x85^John")
        set_raw(ds, "StudyDescription", b"ABDOMEN " * 10)
        set_raw(ds, "PatientSex", b"M\\F")
        set_raw(ds, "ReferringPhysicianName", b"R" * 65)
        set_raw(ds, "WindowCenterWidthExplanation", b"SOFT TISSUE " * 6)  # the GSPS copies each slice's
    files = []
    for number, ds in enumerate(slices):
        files.append(tmp_path / f"slice{number}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    assert dciodvfy(files[0]).errors
    read = [pydicom.dcmread(f) for f in files]
    sources = []
    for f in files:  # as node.pipelines.ct reads a series: large values deferred, the pixels deleted
        header = pydicom.dcmread(f, defer_size=4096)
        del header.PixelData
        sources.append(header)
    expected = {
        "PatientAge",
        "StudyDate",
        "StudyTime",
        "PatientName",
        "StudyDescription",
        "PatientSex",
        "ReferringPhysicianName",
    }

    lumbar = lumbar_result(read)
    pe = pe_result(read)
    assert lumbar.lumbar is not None and lumbar.lumbar.l3_index is not None and pe.pe is not None
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    masks = {"subcutaneous_fat": (r >= 26) & (r < 30), "muscle": (r >= 20) & (r < 26), "visceral_fat": r < 12}
    l3 = read[lumbar.lumbar.l3_index]
    objects = {
        "lumbar_sr": build_lumbar_report(lumbar, sources, params=series(994)),
        "pe_sr": build_pe_report(pe, sources, params=series(993)),
        "kos": build_key_object_selection(
            pe,
            sources,
            [str(l3.SOPInstanceUID)],
            title="of_interest",
            params=series(995),
            description="Key image",
        ),
        "seg": build_tissue_segmentation(l3, masks, lumbar.algorithms[-1], params=series(996)),
        "levels": build_slice_labels(lumbar, sources, level_labels(lumbar.lumbar), params=series(997)),
        "pe_labels": build_slice_labels(pe, sources, pe_labels(pe.pe), params=series(998)),
    }
    for name, ds in objects.items():
        path = write(ds, tmp_path, name)
        assert_dciodvfy_clean(path)
        window = {"WindowCenterWidthExplanation"} if name in ("levels", "pe_labels") else set()
        assert {i.keyword for i in source_attribute_issues(ds)} == expected | window, name
        back = pydicom.dcmread(path)
        # The KOS copies only the Type 2 patient and study attributes (highdicom), not the Patient Study module.
        assert back.get("PatientAge", "062Y") == "062Y" and back.StudyDate == "" and back.PatientName == ""
        assert "StudyDescription" not in back


# --- Through the real cxr pipeline and executor -------------------------------------------


def test_job_summary_names_the_dropped_attributes_without_their_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dimse.scp import spool_part10
    from models.registry import ModelRegistry
    from models.view_filter import ViewFilter
    from node import executor as execution
    from node.assembler import Assembler
    from node.db import Database, Job, JobState
    from node.pipelines.cxr import CxrPipeline
    from node.receiver import Receiver
    from node.router import load_routing
    from node.settings import DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE, DEFAULT_ROUTING_FILE, Settings
    from node.spool import Outbox, Spool
    from training.phantoms import chest_phantom, phantom_dataset

    ds = phantom_dataset(chest_phantom(3, ["Nodule"]))
    set_raw(ds, "PatientAge", b"62")
    set_raw(ds, "StudyTime", b"25:00")
    set_raw(ds, "StudyDescription", b"CHEST PA ERECT " * 6)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    settings = Settings(data_dir=tmp_path / "data", quiet_period={"default": 0.0})
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    receiver = Receiver(settings, db, Spool(settings.spool_dir, settings.tmp_dir))
    outbox = Outbox(settings.outbox_dir, settings.tmp_dir)
    assembler = Assembler(db, load_routing(DEFAULT_ROUTING_FILE), {"cxr"}, {}, [])
    request = spool_part10(
        settings.tmp_dir,
        buffer.getvalue(),
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        peer_port=40000,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
    )
    assert receiver(request) == 0
    assembler.run_once()
    registry = ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE)
    pipeline = CxrPipeline(ViewFilter.from_manifest(registry.require("cxr-view-filter")), uid_root=UID_ROOT)
    job = execution.claim_job(db, "test", {"cxr"})
    assert job is not None
    with caplog.at_level(logging.WARNING, logger="ainode"):
        execution.run_job(db, outbox, pipeline, job)
    with db.session() as session:
        row = session.scalar(select(Job))
        assert row is not None and row.state == JobState.DONE
        summary = row.summary or ""
    db.dispose()
    assert (
        "source attributes dropped: StudyTime (invalid TM), StudyDescription (longer than 64 bytes (LO))" in summary
    ), summary
    assert "source attributes corrected: PatientAge (AS without unit, read as years)" in summary, summary
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "source attributes" in r.getMessage()
    ]
    assert warned and "StudyTime (invalid TM)" in warned[0]
    for text in [summary, *warned]:
        assert "25:00" not in text and "ERECT" not in text and "62," not in text


def test_a_pipeline_output_without_issues_keeps_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    from node.pipelines import PipelineOutput

    header = read_rg1_header()
    result = cxr_result(header)
    clean = build_measurement_report(result, [header], params=series(990))
    with caplog.at_level(logging.WARNING, logger="ainode"):
        output = PipelineOutput(result=result, objects=[clean], summary="view: frontal 0.99")
    assert output.summary == "view: frontal 0.99" and not caplog.records
    # Issues of several objects made from the same source are listed once.
    malformed = _source_with({"PatientAge": b"62"})
    objects = [
        build_measurement_report(cxr_result(malformed), [malformed], params=series(990)),
        build_presentation_state(cxr_result(malformed), [malformed], params=series(991)),
    ]
    output = PipelineOutput(result=result, objects=objects, summary="view: frontal 0.99")
    assert output.summary == (
        "view: frontal 0.99; source attributes corrected: PatientAge (AS without unit, read as years)"
    )


# --- Readability: 3 significant digits, DEMO in the model name ----------------------------


@pytest.mark.parametrize(
    "value, text, number",
    [
        (0.87, "0.870", 0.87),
        (0.8712, "0.871", 0.871),
        (0.99951, "1.00", 1.0),
        (1.0, "1.00", 1.0),
        (0.0123456, "0.0123", 0.0123),
        (0.00001, "0.0000100", 0.00001),
        (0.0, "0.00", 0.0),
    ],
)
def test_probabilities_have_three_significant_digits(value: float, text: str, number: float) -> None:
    assert probability_text(value) == text
    assert significant(value) == number


def _num_values(ds: Dataset) -> list[float]:
    found: list[float] = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "NUM":
            found.append(float(item.MeasuredValueSequence[0].NumericValue))
        found += _num_values(item)
    return found


def _texts(ds: Dataset) -> list[str]:
    found: list[str] = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


def _digits(value: float) -> int:
    return len(f"{value:.15g}".lstrip("-0.").replace(".", "").rstrip("0")) if value else 0


def test_sr_nums_and_texts_round_probabilities_and_every_object_says_demo(tmp_path: Path) -> None:
    header = read_rg1_header()
    result = cxr_result(header, detector=DEMO_DETECTOR)
    image = result.images[0]
    assert image.view is not None
    precise = [replace(f, probability=f.probability + 0.001234) for f in image.findings]
    view = ViewResult("lateral", 0.987654, "PA", "frontal", disagreement=True)
    result = SeriesResult(
        pipeline=result.pipeline,
        study_instance_uid=result.study_instance_uid,
        series_instance_uid=result.series_instance_uid,
        algorithms=result.algorithms,
        images=[
            ImageResult(
                image.sop_instance_uid,
                view=view,
                findings=precise,
                top_findings=image.top_findings,
                triage=image.triage,
            )
        ],
    )
    sr = build_measurement_report(result, [header], params=series(990))
    numbers = _num_values(sr)
    assert numbers and all(_digits(n) <= 3 for n in numbers), numbers
    texts = _texts(sr)
    assert any("Nodule 0.871;" in t for t in texts), texts
    assert any("(probability 0.988)" in t for t in texts), texts
    # The view filter (real weights) is the observer, but a demo model contributed: the SR says DEMO.
    assert "DEMO" in sr.ManufacturerModelName

    gsps = build_presentation_state(result, [header], params=series(991))
    captions = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence for t in a.TextObjectSequence]
    assert "Nodule 0.831" in captions and any(c.startswith("AI: Nodule 0.871, Mass 0.711") for c in captions)
    assert "DEMO" in gsps.ManufacturerModelName

    slices = ct_series(8)
    pe = pe_result(slices)
    assert pe.pe is not None and PE_MODEL.demo
    pe.pe.slice_probabilities[4] = 0.934567
    pe.pe.exam_probabilities["rightsided_pe"] = 0.912345
    pe_sr = build_pe_report(pe, headers(slices), params=series(993))
    numbers = _num_values(pe_sr)
    assert 0.935 in numbers and 0.912 in numbers and all(_digits(n) <= 3 for n in numbers), numbers
    assert pe_labels(pe.pe)[str(slices[4].SOPInstanceUID)] == "PE suspected p=0.935"
    kos = build_key_object_selection(
        pe,
        headers(slices),
        [str(slices[4].SOPInstanceUID)],
        title="of_interest",
        params=series(995),
        description="Key images",
    )
    labels = build_slice_labels(pe, headers(slices), pe_labels(pe.pe), params=series(997))
    for ds in (pe_sr, kos, labels):
        assert "DEMO" in ds.ManufacturerModelName and "DEMO" in ds.SeriesDescription, ds.SOPClassUID
    masks = {key: np.zeros((64, 64), dtype=bool) for key in ("muscle", "subcutaneous_fat", "visceral_fat")}
    seg = build_tissue_segmentation(
        slices[0],
        masks,
        AlgorithmInfo(name="ct-lumbar", version="demo-1", demo=True),
        params=series(996),
    )
    sc = build_secondary_capture(result, pydicom.dcmread(rg1_uncr_path()), params=series(992))
    for ds in (seg, sc):
        assert "DEMO" in ds.ManufacturerModelName and "DEMO" in ds.SeriesDescription, ds.SOPClassUID
    real = AlgorithmInfo(name="ct-pe", version="1.0.0", weights_sha256="c9" * 32)
    not_demo = SeriesResult(
        pipeline="ct_pe",
        study_instance_uid=pe.study_instance_uid,
        series_instance_uid=pe.series_instance_uid,
        algorithms=[real],
        pe=pe.pe,
    )
    kos = build_key_object_selection(
        not_demo,
        headers(slices),
        [str(slices[4].SOPInstanceUID)],
        title="of_interest",
        params=series(995),
        description="Key images",
    )
    assert kos.ManufacturerModelName == "ct-pe" and "DEMO" not in kos.SeriesDescription
