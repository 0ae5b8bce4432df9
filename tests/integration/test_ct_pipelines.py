"""The CT pipelines end to end (issue 4, "Done when"): Orthanc → node → results back in Orthanc.

Orthanc plays the PACS. CT phantoms are stored into it with DCMTK's storescu, Orthanc forwards
each study to the node (``ainode serve`` as a process, the demo weights of ``config/models.yaml``),
the node routes the series by ``config/routing.yaml`` and sends its results back by C-STORE. The
results are downloaded from Orthanc and read as a viewer would (highdicom's SR and SEG readers),
and every one passes dciodvfy:

- a CTPA with a planted right embolus: SR + KOS + GSPS, PE present on the right, the flagged
  slices among the truth's embolus slices;
- a CTPA without embolus: SR only, PE absent;
- an abdomen: SR + SEG + GSPS + KOS, the L3 slice within one slice of the truth, the three
  tissue areas within 5 % of the phantom's, the SEG read back by ``highdicom.seg.segread``;
- a sagittal series: the job fails with the reason, and the node goes on analysing.

Series are small (60 slices of 256², as the demo models were trained on) so the module runs in
well under a minute.
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from node.db import Delivery, DeliveryState, Job, JobState, Result
from sr_writer.codes import code
from tests.helpers import OrthancServer, assert_dciodvfy_clean
from tests.integration.nodeproc import NodeProcess
from tests.node.test_ct_pipeline_units import assert_on_the_clot
from training.phantoms.ct import CtPhantom, abdomen_phantom, ctpa_phantom

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _send(orthanc: OrthancServer, phantom: CtPhantom, folder: Path) -> list[Path]:
    paths = phantom.write_series(folder)
    orthanc.store_with_storescu(paths)
    answer = orthanc.forward_study(phantom.truth["study_uid"], "ainode")
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    return paths


def _finished_job(node: NodeProcess, series_uid: str, timeout: float = 60.0) -> Job:
    """The series' job once it is finished and its results are delivered (or it failed)."""
    db = node.database()
    try:
        deadline = time.monotonic() + timeout
        while True:
            with db.session() as s:
                job = s.scalars(select(Job).where(Job.series_uid == series_uid)).first()
                waiting = 0
                if job is not None:
                    waiting = len(
                        s.scalars(
                            select(Delivery.id)
                            .join(Result, Delivery.result_id == Result.id)
                            .where(Result.job_id == job.id, Delivery.state != DeliveryState.DONE)
                        ).all()
                    )
            if job is not None and job.state in (JobState.DONE, JobState.FAILED) and waiting == 0:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job of series {series_uid}: {job and job.state}, {waiting} deliveries open\n{node.log()}"
                )
            time.sleep(0.2)
    finally:
        db.dispose()


def _results(orthanc: OrthancServer, study_uid: str, folder: Path) -> dict[str, list[tuple[pydicom.Dataset, Path]]]:
    """The node's objects in the study, by modality, downloaded and checked with dciodvfy."""
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for instance in orthanc.instances():
        if instance.study_instance_uid != study_uid or instance.modality == "CT":
            continue
        data = orthanc.download_instance(instance.id)
        path = folder / f"{instance.sop_instance_uid}.dcm"
        path.write_bytes(data)
        assert_dciodvfy_clean(path)
        found.setdefault(instance.modality, []).append((pydicom.dcmread(BytesIO(data)), path))
    return found


def _groups(sr: pydicom.Dataset) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 measurement groups by tracking identifier."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    return {str(g.tracking_identifier): g for g in report.content.get_image_measurement_groups()}


def _evaluation(group: hd.sr.MeasurementsAndQualitativeEvaluations, key: str) -> str:
    """The value of the group's one evaluation of the concept ``key`` (sr_writer.codes); a group also holds others,
    e.g. its Finding for the viewer."""
    [evaluation] = group.get_qualitative_evaluations(name=code(key))
    return str(evaluation.value.meaning)


def _kos_references(kos: pydicom.Dataset) -> set[str]:
    return {
        str(ref.ReferencedSOPInstanceUID)
        for item in kos.ContentSequence
        for ref in item.get("ReferencedSOPSequence", [])
    }


def test_ctpa_with_right_embolus_comes_back_with_sr_kos_gsps(
    ct_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path
) -> None:
    phantom = ctpa_phantom(601, slices=60, size=256, embolus="right")
    _send(module_orthanc, phantom, tmp_path / "series")
    job = _finished_job(ct_node, phantom.truth["series_uid"])
    assert job.state == JobState.DONE and job.pipeline == "ct_pe", (job.state, job.error)
    found = _results(module_orthanc, phantom.truth["study_uid"], tmp_path / "results")
    assert sorted(found) == ["KO", "PR", "SR"], sorted(found)
    truth = set(phantom.truth["pe_sop_uids"])

    [(sr, _)] = found["SR"]
    groups = _groups(sr)
    assert _evaluation(groups["exam PE"], "pulmonary_embolism") == "Present"
    right = groups["exam right-sided PE"]
    assert [fs.value.meaning for fs in right.finding_sites] == ["Pulmonary artery"]
    assert _evaluation(right, "pulmonary_embolism") == "Present"
    assert _evaluation(groups["exam left-sided PE"], "pulmonary_embolism") == "Absent"
    flagged = {s.referenced_sop_instance_uid for s in groups["slices with PE"].source_images}
    assert_on_the_clot(flagged, phantom)

    [(kos, _)] = found["KO"]
    keys = _kos_references(kos)
    assert keys and keys <= flagged and keys & truth
    [(gsps, _)] = found["PR"]
    labelled = {
        str(ref.ReferencedSOPInstanceUID)
        for item in gsps.GraphicAnnotationSequence
        for ref in item.ReferencedImageSequence
    }
    assert labelled == flagged
    assert all(
        ds.StudyInstanceUID == phantom.truth["study_uid"] for ds, _ in (*found["SR"], *found["KO"], *found["PR"])
    )


def test_ctpa_without_embolus_comes_back_negative_with_sr_only(
    ct_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path
) -> None:
    phantom = ctpa_phantom(602, slices=60, size=256, embolus=None)
    _send(module_orthanc, phantom, tmp_path / "series")
    job = _finished_job(ct_node, phantom.truth["series_uid"])
    assert job.state == JobState.DONE and job.summary and job.summary.startswith("PE absent"), (job.error, job.summary)
    found = _results(module_orthanc, phantom.truth["study_uid"], tmp_path / "results")
    assert sorted(found) == ["SR"], sorted(found)
    groups = _groups(found["SR"][0][0])
    assert _evaluation(groups["exam PE"], "pulmonary_embolism") == "Absent"
    assert "slices with PE" not in groups


def test_abdomen_comes_back_with_sr_seg_gsps_kos_l3_and_areas(
    ct_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path
) -> None:
    phantom = abdomen_phantom(603, slices=60, size=256, spacing_z=5.0)
    _send(module_orthanc, phantom, tmp_path / "series")
    job = _finished_job(ct_node, phantom.truth["series_uid"])
    assert job.state == JobState.DONE and job.pipeline == "ct_lumbar", (job.state, job.error)
    found = _results(module_orthanc, phantom.truth["study_uid"], tmp_path / "results")
    assert sorted(found) == ["KO", "PR", "SEG", "SR"], sorted(found)
    order = phantom.truth["sop_uids"]  # volume order, head to feet
    truth_l3 = order.index(phantom.truth["l3_sop_uid"])

    [(sr, _)] = found["SR"]
    group = _groups(sr)["L3 slice body composition"]
    [l3] = {s.referenced_sop_instance_uid for s in group.source_images}
    assert abs(order.index(l3) - truth_l3) <= 1, (order.index(l3), truth_l3)
    areas = {
        m.finding_sites[0].value.meaning: float(m.value)
        for m in group.get_measurements()
        if m.name.meaning == "Area" and m.unit.value == "cm2"
    }
    expected = phantom.truth["areas_cm2"]
    assert areas["Skeletal muscle"] == pytest.approx(expected["muscle"], rel=0.05), (areas, expected)
    assert areas["Subcutaneous tissue"] == pytest.approx(expected["subcutaneous_fat"], rel=0.05), (areas, expected)
    assert areas["Fat"] == pytest.approx(expected["visceral_fat"], rel=0.05), (areas, expected)

    [(kos, _)] = found["KO"]
    assert _kos_references(kos) == {l3}
    [(gsps, _)] = found["PR"]
    labelled = {
        str(ref.ReferencedSOPInstanceUID)
        for item in gsps.GraphicAnnotationSequence
        for ref in item.ReferencedImageSequence
    }
    assert labelled == set(order)  # the level written on every slice
    [(_, seg_path)] = found["SEG"]
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == SEG_CLASS
    assert [str(d.SegmentLabel) for d in seg.SegmentSequence] == ["skeletal muscle", "subcutaneous fat", "visceral fat"]
    # The masks are on the L3 slice and are what the areas were measured on.
    masks = seg.get_pixels_by_source_instance([l3], segment_numbers=[1, 2, 3])[0]
    pixel_cm2 = phantom.pixel_mm**2 / 100.0
    for plane, tissue in enumerate(["Skeletal muscle", "Subcutaneous tissue", "Fat"]):
        assert float(masks[:, :, plane].sum()) * pixel_cm2 == pytest.approx(areas[tissue], rel=1e-3), tissue


def test_sagittal_series_fails_with_its_reason_and_the_node_goes_on(
    ct_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path
) -> None:
    phantom = ctpa_phantom(604, slices=40, size=128, embolus=None)
    paths = phantom.write_series(tmp_path / "axial")
    sagittal = []
    for k, path in enumerate(sorted(paths)):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-60.0 + 3.0 * k, -90.0, 120.0]
        ds.save_as(tmp_path / f"sag{k}.dcm", enforce_file_format=True)
        sagittal.append(tmp_path / f"sag{k}.dcm")
    module_orthanc.store_with_storescu(sagittal)
    module_orthanc.forward_study(phantom.truth["study_uid"], "ainode")
    job = _finished_job(ct_node, phantom.truth["series_uid"])
    assert job.state == JobState.FAILED
    assert job.error and "not an axial series" in job.error and "sagittal" in job.error, job.error
    assert ct_node.proc is not None and ct_node.proc.poll() is None
    # The same node still analyses the next series.
    follow = ctpa_phantom(605, slices=60, size=256, embolus=None)
    _send(module_orthanc, follow, tmp_path / "follow")
    assert _finished_job(ct_node, follow.truth["series_uid"]).state == JobState.DONE
