"""Pipeline ``ct_pe``: pulmonary embolism on CT pulmonary angiography.

The PE model reproduces the RSNA-PE Xception design (see :mod:`models`): nine sigmoid heads per
slice, as in the RSNA Pulmonary Embolism Detection Challenge 2020 data.

The series is planned from its headers (``node.pipelines.ct``), the PE model
(``models.pe``) reads the slices in bounded batches, scores every slice and the exam,
and enforces the RSNA label-consistency rules. Results go back as:

- a TID 1500 measurement report with the exam findings and the positive slices;
- when PE is found, a Key Object Selection of the key slices (what the radiologist
  opens first) and a presentation state with a text on every flagged slice.

A negative exam gets the report only: a KOS or GSPS with nothing in it would be noise
in the viewer. So does an indeterminate one, among them a series that cannot be read for
PE at all (``models.plausibility``: it does not cover the lungs, where the pulmonary
arteries run, or the model flags slices outside them): the report says indeterminate and
why, the job's summary "PE indeterminate: <reasons>".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from core.findings import SeriesResult
from models.pe import PeModel
from models.registry import ModelRegistry
from node.pipelines import PipelineOutput
from node.pipelines.ct import CtPipeline, model_input_errors, plan_ct_series
from sr_writer import SeriesParams, build_key_object_selection, build_pe_report, build_slice_labels, pe_labels

log = logging.getLogger("ainode.pipeline.ct_pe")

#: Fewest axial slices analysed: a CTPA covers the chest in well over 30 slices; fewer is a
#: scout, a thin slab or a partial series.
MIN_SLICES = 30
#: Each result series' Series Number: ``result_series_number`` plus this (docs/conformance.md lists them).
SERIES_OFFSETS = {"SR": 0, "KOS": 1, "GSPS": 2}


class CtPePipeline(CtPipeline):
    """The CTPA pipeline; one instance per worker (the model is loaded once).

    ``batch_size`` is the number of slices per backend call; the other parameters are
    :class:`~node.pipelines.ct.CtPipeline`'s.
    """

    name = "ct_pe"
    model: PeModel

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        uid_root: str,
        threads: int = 1,
        series_number: int = 990,
        institution_name: str | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__(
            registry, uid_root=uid_root, threads=threads, series_number=series_number, institution_name=institution_name
        )
        self.batch_size = batch_size

    def _load_model(self, registry: ModelRegistry, threads: int) -> None:
        self.model = PeModel.from_manifest(registry.require("ct-pe"), threads=threads)

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        started = time.perf_counter()
        series = plan_ct_series(paths, min_slices=MIN_SLICES, pipeline=self.name)
        planned = time.perf_counter()
        with model_input_errors(self.name):
            pe = self.model.analyse(series.plan, series.paths, batch_size=self.batch_size)
        inferred = time.perf_counter()
        result = SeriesResult(
            pipeline=self.name,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            algorithms=[self.model.algorithm],
            pe=pe,
            supersedes=[str(p.SOPInstanceUID) for p in predecessors],
        )
        sources = series.sources()
        params = SeriesParams(self.uid_root, self.series_number, institution_name=self.institution_name)
        objects = [build_pe_report(result, sources, params, predecessors=predecessors)]
        present = not pe.exam_labels.get("negative_exam_for_pe", True) and not pe.exam_labels.get(
            "indeterminate", False
        )
        if present and pe.key_slices:
            key_uids = [pe.slice_uids[i] for i in pe.key_slices]
            objects.append(
                build_key_object_selection(
                    result,
                    sources,
                    key_uids,
                    params.with_series_number(self.series_number + SERIES_OFFSETS["KOS"]),
                    title="of_interest",
                    description="Key images: suspected pulmonary embolism",
                )
            )
        if present and pe.positive_slices:
            objects.append(
                build_slice_labels(
                    result,
                    sources,
                    pe_labels(pe),
                    params.with_series_number(self.series_number + SERIES_OFFSETS["GSPS"]),
                )
            )
        written = time.perf_counter()
        sides = [s for s in ("rightsided_pe", "leftsided_pe", "central_pe") if pe.exam_labels.get(s)]
        outcome = "present" if present else "indeterminate" if pe.exam_labels.get("indeterminate") else "absent"
        summary = (
            f"PE {outcome}"
            + (f": {'; '.join(pe.indeterminate_reasons)}" if pe.indeterminate_reasons else "")
            + (f" ({', '.join(s.replace('sided_pe', '').replace('_pe', '') for s in sides)})" if sides else "")
            + f"; {len(pe.positive_slices)} positive of {len(pe.slice_uids)} slices"
            + f"; plan {planned - started:.2f} s, model {inferred - planned:.2f} s, objects {written - inferred:.2f} s"
        )
        log.info("%s", summary)
        return PipelineOutput(
            result=result, objects=objects, summary=summary, warnings=series.warnings + pe.corrections
        )
