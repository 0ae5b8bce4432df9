"""The CT writers on the repository's CT phantoms, written to disk as the scanner would.

The phantoms (``training.phantoms.ct``) are written as CT Image Storage files with
shuffled file names and two windows per slice, then read back as the node reads
them. Results are built from the phantoms' ground truth in series-plan order
(ascending z, the reverse of the phantom's volume order), as the models give
them; every object is checked with ``dciodvfy`` and read back.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from core.findings import (
    AlgorithmInfo,
    BodyComposition,
    LevelRun,
    LumbarResult,
    PeExamResult,
    SeriesResult,
)
from sr_writer import (
    build_key_object_selection,
    build_lumbar_report,
    build_pe_report,
    build_slice_labels,
    build_tissue_segmentation,
    code,
    level_labels,
    pe_labels,
)
from tests.helpers import assert_dciodvfy_clean
from tests.sr_writer.scenarios import series, write
from training.phantoms.ct import CtPhantom, abdomen_phantom, ctpa_phantom

PE_MODEL = AlgorithmInfo(name="ct-pe", version="demo-1", demo=True)
LUMBAR_MODEL = AlgorithmInfo(name="ct-lumbar", version="demo-1", demo=True)


def _written(phantom: CtPhantom, folder: Path) -> dict[str, Dataset]:
    """The phantom's files read back, by SOP Instance UID (pixels kept: the SEG needs its slice)."""
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in phantom.write_series(folder))}


def _plan_uids(phantom: CtPhantom) -> list[str]:
    """SOP Instance UIDs in series-plan order (ascending z): volume index k is plan index n-1-k."""
    return list(reversed(phantom.truth["sop_uids"]))


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, dict[str, Dataset]]:
    phantom = abdomen_phantom(1, slices=28, size=64, spacing_z=10.0)
    return phantom, _written(phantom, tmp_path_factory.mktemp("abdomen"))


@pytest.fixture(scope="module")
def ctpa(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtPhantom, dict[str, Dataset]]:
    phantom = ctpa_phantom(2, slices=24, size=64, embolus="right")
    return phantom, _written(phantom, tmp_path_factory.mktemp("ctpa"))


def _lumbar_result(phantom: CtPhantom, slices: dict[str, Dataset]) -> SeriesResult:
    uids = _plan_uids(phantom)
    levels = list(reversed(phantom.truth["levels"]))
    runs, start = [], 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i] != levels[start]:
            runs.append(LevelRun(levels[start], start, i - 1))
            start = i
    l3 = phantom.plan_index(phantom.truth["l3_index"])
    areas = phantom.truth["areas_cm2"]
    composition = BodyComposition(
        sop_instance_uid=uids[l3],
        muscle_cm2=areas["muscle"],
        subcutaneous_fat_cm2=areas["subcutaneous_fat"],
        visceral_fat_cm2=areas["visceral_fat"],
        patient_size_m=phantom.truth["patient_size_m"],
        skeletal_muscle_index=phantom.truth["skeletal_muscle_index"],
    )
    first = slices[uids[0]]
    return SeriesResult(
        pipeline="ct_lumbar",
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        algorithms=[LUMBAR_MODEL],
        lumbar=LumbarResult(slice_uids=uids, levels=levels, runs=runs, l3_index=l3, composition=composition),
    )


def test_abdomen_phantom_gets_sr_seg_gsps_and_kos(
    abdomen: tuple[CtPhantom, dict[str, Dataset]], tmp_path: Path
) -> None:
    phantom, slices = abdomen
    result = _lumbar_result(phantom, slices)
    assert result.lumbar is not None
    sources = list(slices.values())
    l3_uid = phantom.truth["l3_sop_uid"]
    assert result.lumbar.slice_uids[result.lumbar.l3_index or 0] == l3_uid

    sr_path = write(build_lumbar_report(result, sources, params=series(994)), tmp_path, "sr")
    assert_dciodvfy_clean(sr_path)
    groups = {str(g.tracking_identifier): g for g in hd.sr.srread(sr_path).content.get_image_measurement_groups()}
    l3 = groups["L3 slice body composition"]
    assert [str(s.referenced_sop_instance_uid) for s in l3.source_images] == [l3_uid]
    areas = sorted(m.value for m in l3.get_measurements(name=code("area")))
    assert areas == pytest.approx(sorted(phantom.truth["areas_cm2"].values()))
    # Each level run references exactly the phantom's slices of that level.
    for level, (first, last) in phantom.truth["level_ranges"].items():
        (run,) = [g for k, g in groups.items() if k.startswith(f"level {level} run")]
        expected = {phantom.truth["sop_uids"][k] for k in range(first, last + 1)}
        assert {str(s.referenced_sop_instance_uid) for s in run.source_images} == expected, level

    masks = {
        key: np.asarray(phantom.truth["masks_at_l3"][key]) for key in ("muscle", "subcutaneous_fat", "visceral_fat")
    }
    seg_path = write(
        build_tissue_segmentation(slices[l3_uid], masks, LUMBAR_MODEL, params=series(996)),
        tmp_path,
        "seg",
    )
    assert_dciodvfy_clean(seg_path)
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=[l3_uid], segment_numbers=[1, 2, 3]
    )
    for number, key in enumerate(masks):
        np.testing.assert_array_equal(pixels[0, :, :, number].astype(bool), masks[key])
        assert masks[key].any(), key  # the phantom has every tissue on L3

    labels = level_labels(result.lumbar)
    pr_path = write(build_slice_labels(result, sources, labels, params=series(997)), tmp_path, "pr")
    assert_dciodvfy_clean(pr_path)
    pr = pydicom.dcmread(pr_path)
    shown = {
        str(a.ReferencedImageSequence[0].ReferencedSOPInstanceUID): str(a.TextObjectSequence[0].UnformattedTextValue)
        for a in pr.GraphicAnnotationSequence
    }
    expected = {uid: f"{level} (DEMO)" for uid, level in phantom.truth["levels_by_sop_uid"].items()}
    expected[l3_uid] = "L3 (L3 slice) (DEMO)"
    assert shown == expected
    # The slices' own windows (the phantom writes two, soft tissue first) are kept as they are.
    for voi in pr.SoftcopyVOILUTSequence:
        assert [float(c) for c in voi.WindowCenter] == [float(c) for c in slices[l3_uid].WindowCenter]
        assert [float(w) for w in voi.WindowWidth] == [float(w) for w in slices[l3_uid].WindowWidth]

    kos_path = write(
        build_key_object_selection(
            result,
            sources,
            [l3_uid],
            title="for_referring_provider",
            params=series(995),
            description="L3 slice",
        ),
        tmp_path,
        "kos",
    )
    assert_dciodvfy_clean(kos_path)
    kos = pydicom.dcmread(kos_path)
    assert [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in kos.ContentSequence if i.ValueType == "IMAGE"
    ] == [l3_uid]


def test_ctpa_phantom_with_a_right_embolus_is_reported_right_sided_on_its_slices(
    ctpa: tuple[CtPhantom, dict[str, Dataset]], tmp_path: Path
) -> None:
    phantom, slices = ctpa
    truth = phantom.truth
    uids = _plan_uids(phantom)
    positive = sorted(phantom.plan_index(k) for k in truth["pe_slices"])
    assert positive, "the phantom must have slices with the embolus"
    probabilities = [0.9 if i in positive else 0.05 for i in range(len(uids))]
    labels = {k: bool(v) for k, v in truth["exam_labels"].items()}
    pe = PeExamResult(
        slice_uids=uids,
        slice_probabilities=probabilities,
        exam_probabilities={k: 0.9 if v else 0.1 for k, v in labels.items()},
        exam_labels=labels,
        positive_slices=positive,
        key_slices=positive[:1],
    )
    first = slices[uids[0]]
    result = SeriesResult(
        pipeline="ct_pe",
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        algorithms=[PE_MODEL],
        pe=pe,
    )
    sources = list(slices.values())

    sr_path = write(build_pe_report(result, sources, params=series(993)), tmp_path, "sr")
    assert_dciodvfy_clean(sr_path)
    groups = {str(g.tracking_identifier): g for g in hd.sr.srread(sr_path).content.get_image_measurement_groups()}
    (evaluation,) = groups["exam right-sided PE"].get_qualitative_evaluations(name=code("pulmonary_embolism"))
    assert evaluation.value == code("present")
    assert {str(s.referenced_sop_instance_uid) for s in groups["slices with PE"].source_images} == {
        truth["sop_uids"][k] for k in truth["pe_slices"]
    }

    flagged = pe_labels(pe)
    assert set(flagged.values()) == {"PE suspected p=0.900"}
    pr_path = write(build_slice_labels(result, sources, flagged, params=series(997)), tmp_path, "pr")
    assert_dciodvfy_clean(pr_path)
    assert len(pydicom.dcmread(pr_path).GraphicAnnotationSequence) == len(positive)

    kos_path = write(
        build_key_object_selection(
            result,
            sources,
            [uids[i] for i in positive],
            title="of_interest",
            params=series(995),
            description="Slices with pulmonary embolism",
        ),
        tmp_path,
        "kos",
    )
    assert_dciodvfy_clean(kos_path)
