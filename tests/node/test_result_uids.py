"""A job run again writes the same result UIDs (issue 17: a redelivered job never puts two copies in the PACS).

:func:`node.executor.run_job` runs the real pipelines: ``cxr`` (the committed view filter and
scripted models, run in parallel threads, with the secondary capture on: SR, GSPS, SC) and
``ct_pe`` (tiny constant ONNX models on a CTPA phantom: SR, KOS, GSPS slice labels). The same job
row (id, series, generation, pipeline, analysis key, fingerprint) is run in two fresh databases and
outboxes, as a second worker would run it after the first died before committing; the Result rows
and the files in the outbox must carry the same UIDs. Another job of the series must not, and the
pipeline outside a job stays random. (SEG is covered writer by writer in
tests/sr_writer/test_deterministic_uids.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from sqlalchemy import select

from node import executor as execution
from node.db import Database, Instance, Job, JobState, Result
from node.pipelines import Pipeline
from node.pipelines.ct_pe import CtPePipeline
from node.spool import Outbox
from sr_writer.uids import is_under_root
from tests.node.test_ct_pipeline_units import UID_ROOT as CT_ROOT
from tests.node.test_ct_pipeline_units import ctpa_none, tiny_pe, tiny_registry  # noqa: F401  (fixtures)
from tests.node.test_cxr_pipeline import UID_ROOT as CXR_ROOT
from tests.node.test_cxr_pipeline import _frontal, _pipeline, view_filter  # noqa: F401  (fixture)
from training.phantoms.ct import CtPhantom


def _run(
    folder: Path, pipeline: Pipeline, paths: Sequence[Path], *, job_id: int = 17, generation: int = 1
) -> dict[str, list[str]]:
    """Run job ``job_id`` of the series of ``paths`` in a fresh database and outbox.

    Returns, per result kind, the ``SOP Instance UID / Series Instance UID`` of each Result row, in
    order, after checking that the file in the outbox carries them.
    """
    folder.mkdir(parents=True)
    db = Database(f"sqlite:///{folder / 'node.db'}")
    db.create_schema()
    outbox = Outbox(folder / "outbox", folder / "tmp")
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    try:
        with db.session() as session:
            for path in paths:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                session.add(
                    Instance(
                        sop_uid=str(ds.SOPInstanceUID),
                        series_uid=series,
                        study_uid=study,
                        sop_class_uid=str(ds.SOPClassUID),
                        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                        path=str(path),
                        size=path.stat().st_size,
                    )
                )
            session.add(
                Job(
                    id=job_id,
                    series_uid=series,
                    study_uid=study,
                    pipeline=pipeline.name,
                    destinations=["pacs"],
                    generation=generation,
                    state=JobState.RUNNING,
                    attempts=1,
                    worker="test",
                    fingerprint="f" * 64,
                    analysis_key="a" * 64,
                )
            )
        with db.session() as session:
            job = session.get_one(Job, job_id)
        execution.run_job(db, outbox, pipeline, job)
        with db.session() as session:
            row = session.get_one(Job, job_id)
            assert row.state == JobState.DONE, row.error
            results = session.scalars(select(Result).order_by(Result.id)).all()
        made: dict[str, list[str]] = {}
        for result in results:
            ds = pydicom.dcmread(result.path, stop_before_pixels=True)
            assert str(ds.SOPInstanceUID) == result.sop_uid
            made.setdefault(result.kind, []).append(f"{ds.SOPInstanceUID} / {ds.SeriesInstanceUID}")
        return made
    finally:
        db.dispose()


def _uids(made: dict[str, list[str]]) -> set[str]:
    return {uid for pairs in made.values() for pair in pairs for uid in pair.split(" / ")}


def test_cxr_job_run_again_writes_the_same_uids(tmp_path: Path, view_filter) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    frontal = _frontal(tmp_path, name="frontal.dcm")
    pipeline = _pipeline(view_filter, secondary_capture=True, parallel_models=True)
    first = _run(tmp_path / "worker-1", pipeline, [frontal])
    assert sorted(first) == ["PR", "SC", "SR"]
    again = _run(tmp_path / "worker-2", pipeline, [frontal])
    assert again == first
    for uid in _uids(first):
        assert is_under_root(uid, CXR_ROOT), uid
    # Another job of the same series (a re-analysis), or the same job of a later generation: new UIDs.
    other_job = _run(tmp_path / "other-job", pipeline, [frontal], job_id=18)
    next_generation = _run(tmp_path / "generation-2", pipeline, [frontal], generation=2)
    assert not _uids(other_job) & _uids(first)
    assert not _uids(next_generation) & _uids(first)
    # Outside a job (ainode analyze, a test) the pipeline's UIDs stay random.
    source = pydicom.dcmread(frontal, stop_before_pixels=True)
    loose = [
        {
            str(ds.SOPInstanceUID)
            for ds in pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [frontal]).objects
        }
        for _ in range(2)
    ]
    assert not loose[0] & loose[1] and not loose[0] & _uids(first)


def test_ct_pe_job_run_again_writes_the_same_uids(
    tmp_path: Path,
    tiny_pe: CtPePipeline,  # noqa: F811
    ctpa_none: tuple[CtPhantom, list[Path]],  # noqa: F811
) -> None:
    _, paths = ctpa_none
    first = _run(tmp_path / "worker-1", tiny_pe, paths)
    assert sorted(first) == ["KO", "PR", "SR"]
    assert _run(tmp_path / "worker-2", tiny_pe, paths) == first
    for uid in _uids(first):
        assert is_under_root(uid, CT_ROOT), uid
    assert not _uids(_run(tmp_path / "other-job", tiny_pe, paths, job_id=99)) & _uids(first)
