"""Pipeline ``ct_lumbar``: vertebral level of every abdominal CT slice, and body composition at L3.

The level classifier reproduces the lumbar-level design (see :mod:`models`): seven classes per slice,
T, L1-L5 and S, to find the L3 slice for sarcopenia.

The lumbar model (``models.lumbar``) runs on a few slices chosen by its search strategy,
decodes a level for every slice as a sequence that is monotonic along the patient axis,
picks the L3 slice at the centre of the L3 run and measures skeletal muscle,
subcutaneous and visceral fat there. Results go back as:

- a TID 1500 measurement report: level ranges with slice references, the L3 slice,
  the areas in cm² (and the skeletal muscle index when PatientSize is known);
- a Segmentation of the three tissues on the L3 slice;
- a presentation state with the level written on every slice;
- a Key Object Selection of the L3 slice.

A level map that is anatomically impossible (``models.plausibility``: levels out of order, a
level missing, no L3 between L2 and L4, a run too short or too long in mm) gets the report
only, saying that the vertebral level could not be determined and why: no level labels, no
L3 slice, no segmentation, nothing a radiologist could read as a finding. The job is done,
its summary "level not determined: <reasons>".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from core.findings import SeriesResult
from models.lumbar import LumbarModel
from models.registry import ModelRegistry
from node.dicomheader import read_file
from node.errors import InputError
from node.pipelines import PipelineOutput
from node.pipelines.ct import CtPipeline, model_input_errors, patient_size_m, plan_ct_series
from sr_writer import (
    SeriesParams,
    build_key_object_selection,
    build_lumbar_report,
    build_slice_labels,
    build_tissue_segmentation,
    level_labels,
)

log = logging.getLogger("ainode.pipeline.ct_lumbar")

#: Fewest axial slices analysed: the lumbar spine is ~18 cm long, 20 slices at 5 mm cover
#: less than that; anything shorter cannot hold a level sequence.
MIN_SLICES = 20
#: Each result series' Series Number: ``result_series_number`` plus this (docs/conformance.md lists them).
SERIES_OFFSETS = {"SR": 0, "KOS": 1, "GSPS": 2, "SEG": 3}


class CtLumbarPipeline(CtPipeline):
    """The abdominal CT pipeline; one instance per worker (the model is loaded once)."""

    name = "ct_lumbar"
    model: LumbarModel

    def _load_model(self, registry: ModelRegistry, threads: int) -> None:
        self.model = LumbarModel.from_manifest(registry.require("ct-lumbar"), threads=threads)

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        started = time.perf_counter()
        series = plan_ct_series(paths, min_slices=MIN_SLICES, pipeline=self.name)
        sources = series.sources()
        height = patient_size_m(sources[0])
        planned = time.perf_counter()
        with model_input_errors(self.name):
            lumbar, masks = self.model.analyse(series.plan, series.paths, patient_size_m=height)
        inferred = time.perf_counter()
        result = SeriesResult(
            pipeline=self.name,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            algorithms=[self.model.algorithm],
            lumbar=lumbar,
            supersedes=[str(p.SOPInstanceUID) for p in predecessors],
        )
        params = SeriesParams(self.uid_root, self.series_number, institution_name=self.institution_name)
        objects = [build_lumbar_report(result, sources, params, predecessors=predecessors)]
        if lumbar.not_determined:
            summary = (
                f"level not determined: {'; '.join(lumbar.not_determined)}"
                f"; {len(lumbar.evaluated)} of {len(lumbar.slice_uids)} slices through the model"
                f"; plan {planned - started:.2f} s, model {inferred - planned:.2f} s, "
                f"objects {time.perf_counter() - inferred:.2f} s"
            )
            log.info("%s", summary)
            return PipelineOutput(result=result, objects=objects, summary=summary, warnings=series.warnings)
        objects.append(
            build_slice_labels(
                result,
                sources,
                level_labels(lumbar),
                params.with_series_number(self.series_number + SERIES_OFFSETS["GSPS"]),
            )
        )
        if lumbar.l3_index is not None:
            l3_uid = lumbar.slice_uids[lumbar.l3_index]
            objects.append(
                build_key_object_selection(
                    result,
                    sources,
                    [l3_uid],
                    params.with_series_number(self.series_number + SERIES_OFFSETS["KOS"]),
                    title="of_interest",
                    description="Key image: L3 slice for body composition",
                )
            )
            if masks is not None:
                try:
                    l3_source = read_file(series.paths[l3_uid])
                except Exception as exc:  # the file was read moments ago by the model
                    raise InputError(f"{self.name}: cannot re-read the L3 slice {l3_uid}: {exc}") from exc
                objects.append(
                    # No Institution Name on the SEG, as before SeriesParams (the other objects carry it).
                    build_tissue_segmentation(
                        l3_source,
                        masks,
                        self.model.algorithm,
                        SeriesParams(self.uid_root, self.series_number + SERIES_OFFSETS["SEG"]),
                    )
                )
        written = time.perf_counter()
        comp = lumbar.composition
        runs = ", ".join(f"{r.level} {r.first}-{r.last}" for r in lumbar.runs)
        summary = (
            f"levels {runs}; L3 slice {lumbar.l3_index if lumbar.l3_index is not None else 'not found'}"
            + (
                f"; muscle {comp.muscle_cm2:.1f} cm², SAT {comp.subcutaneous_fat_cm2:.1f} cm², "
                f"VAT {comp.visceral_fat_cm2:.1f} cm²"
                if comp
                else ""
            )
            + f"; {len(lumbar.evaluated)} of {len(lumbar.slice_uids)} slices through the model"
            + f"; plan {planned - started:.2f} s, model {inferred - planned:.2f} s, objects {written - inferred:.2f} s"
        )
        log.info("%s", summary)
        return PipelineOutput(result=result, objects=objects, summary=summary, warnings=series.warnings)
