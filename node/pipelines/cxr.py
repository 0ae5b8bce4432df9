"""Pipeline ``cxr``: chest radiographs (CR, DX, DX for presentation).

Step 1, the view filter of seed 5 (``models.view_filter``): frontal or
lateral. A lateral image stops here and its SR says it was not analysed
further. The results are written as a TID 1500 measurement report
(``sr_writer``) in the source study.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from highdicom.enum import SpecificCharacterSetValues
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset

from models.findings import ImageResult, SeriesResult
from models.registry import ModelRegistry
from models.view_filter import ViewFilter
from node.errors import InputError
from node.pipelines import PipelineOutput, check_decodable_size, read_image
from sr_writer import build_measurement_report

if TYPE_CHECKING:
    from node.settings import Settings

log = logging.getLogger("ainode.pipeline.cxr")

#: SOP classes analysed: CR, DX for presentation and for processing, and digital mammography is not.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",      # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture (scanned films), when routed here
}


class CxrPipeline:
    """The chest radiograph pipeline; one instance per worker."""

    name = "cxr"

    def __init__(self, registry: ModelRegistry, *, uid_root: str, threads: int = 1, series_number: int = 990,
                 institution_name: str | None = None) -> None:
        self.view_filter = ViewFilter.from_manifest(registry.require("cxr-view-filter"), threads=threads)
        self.uid_root = uid_root
        self.series_number = series_number
        self.institution_name = institution_name

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: "Settings") -> "CxrPipeline":
        """The pipeline as the node's settings configure it."""
        return cls(registry, uid_root=settings.uid_root, threads=settings.threads_per_model,
                   series_number=settings.result_series_number, institution_name=settings.institution_name)

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        images: list[Dataset] = []
        problems: list[str] = []
        for path in paths:
            try:
                ds = read_image(path)
            except Exception as exc:  # pydicom raises many types for damaged files
                problems.append(f"{Path(path).name}: unreadable ({exc})")
                continue
            if "PixelData" not in ds:
                problems.append(f"{ds.get('SOPInstanceUID', Path(path).name)}: no pixel data")
                continue
            try:
                check_decodable_size(ds)
            except InputError as exc:
                problems.append(f"{ds.get('SOPInstanceUID', Path(path).name)}: {exc}")
                continue
            images.append(ds)
        if not images:
            raise InputError("no analysable image in the series: " + "; ".join(problems))
        predictions = []
        analysed: list[Dataset] = []
        for ds in images:  # one at a time so a damaged image fails alone
            try:
                predictions.append(self.view_filter.predict([ds])[0])
                analysed.append(ds)
            except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError) as exc:
                problems.append(f"{ds.SOPInstanceUID}: {exc}")
        if not analysed:
            raise InputError("no image could be analysed: " + "; ".join(problems))
        image_results = [
            ImageResult(
                sop_instance_uid=str(ds.SOPInstanceUID),
                view=pred,
                analysed_further=pred.view == "frontal",
                note=None if pred.view == "frontal" else "lateral view: not analysed further",
            )
            for ds, pred in zip(analysed, predictions)
        ]
        result = SeriesResult(
            pipeline=self.name, study_instance_uid=study_uid, series_instance_uid=series_uid,
            algorithms=[self.view_filter.algorithm], images=image_results,
            supersedes=[str(p.SOPInstanceUID) for p in predecessors],
        )
        headers = [_header(ds) for ds in analysed]
        sr = build_measurement_report(
            result, headers, uid_root=self.uid_root, series_number=self.series_number,
            institution_name=self.institution_name, predecessors=predecessors,
        )
        views = ", ".join(f"{r.view.view} {r.view.probability:.2f}" for r in image_results if r.view)
        return PipelineOutput(result=result, objects=[sr], summary=f"view: {views}", warnings=problems)


#: Specific Character Set values highdicom writes (PS3.3 C.12.1.1.2); it copies the source's into the SR.
_SR_CHARSETS = {m.value for m in SpecificCharacterSetValues}


def _header(ds: Dataset) -> Dataset:
    header = Dataset()
    header.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    charset = ds.get("SpecificCharacterSet")
    values = [] if charset is None else [charset] if isinstance(charset, str) else list(charset)
    if values and (len(values) > 1 or values[0] not in _SR_CHARSETS):
        # ISO 2022 code extensions (Korean, Japanese: a first value that is empty), or a value highdicom
        # does not know: decode the text with the source's own character set, write the SR in UTF-8.
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
    for elem in ds:
        if elem.tag.group != 0x7FE0:
            header.add(elem)
    return header

