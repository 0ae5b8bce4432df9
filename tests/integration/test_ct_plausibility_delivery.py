"""An anatomically impossible lumbar result end to end (issue 14): Orthanc → node → "not determined" back in Orthanc.

The abdomen phantom of the CT pipeline test, with its slice positions stretched three times
(the same images said to lie 15 mm apart, every vertebra three times too tall), is stored into
Orthanc and forwarded to ``ainode serve`` with the demo weights. The job is done, not failed, its
summary "level not determined: …", and the only object that reaches Orthanc is the SR saying
so and why (dciodvfy-clean): no level labels, no L3 key image, no segmentation.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from node.db import JobState
from tests.helpers import OrthancServer
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_ct_pipelines import _evaluation, _finished_job, _groups, _results
from training.phantoms.ct import abdomen_phantom


def test_a_stretched_abdomen_comes_back_as_not_determined_and_nothing_else(
    ct_node: NodeProcess,
    module_orthanc: OrthancServer,
    tmp_path: Path,
) -> None:
    phantom = abdomen_phantom(611, slices=60, size=256, spacing_z=5.0)
    paths = phantom.write_series(tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{3.0 * z:.4f}"]
        ds.SliceLocation = f"{3.0 * z:.4f}"
        ds.SliceThickness = "15"
        ds.save_as(path, enforce_file_format=True)
    module_orthanc.store_with_storescu(paths)
    answer = module_orthanc.forward_study(phantom.truth["study_uid"], "ainode")
    assert answer.get("FailedInstancesCount", 0) == 0, answer

    job = _finished_job(ct_node, phantom.truth["series_uid"])
    assert job.state == JobState.DONE and job.pipeline == "ct_lumbar", (job.state, job.error)
    assert job.summary and job.summary.startswith("level not determined: "), job.summary
    assert "more than the 60 mm a lumbar level with its disc can" in job.summary, job.summary

    found = _results(module_orthanc, phantom.truth["study_uid"], tmp_path / "results")  # each checked by dciodvfy
    assert sorted(found) == ["SR"], sorted(found)
    [(sr, _)] = found["SR"]
    groups = _groups(sr)
    assert list(groups) == ["vertebral level not determined"]
    group = groups["vertebral level not determined"]
    assert _evaluation(group, "vertebral_level") == "Undetermined"
    texts = [str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    assert any(t.startswith("Vertebral level could not be determined") for t in texts), texts
    assert any(t.startswith("Reason: L3 spans ") for t in texts), texts
