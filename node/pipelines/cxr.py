"""Pipeline ``cxr``: chest radiographs (CR, DX, DX for presentation).

Steps, for the images of one series:

1. read, check and decode each image **once** (:func:`models.preprocess.radiograph.radiograph_to_unit`:
   full resolution, 0..1, bone white); an image that cannot be read or decoded fails alone and is
   named in the job's warnings;
2. the frontal/lateral view filter (``models.view_filter``, the MIMIC-CXR view-filter design) on all
   decoded images in one batch; a lateral image stops here and its SR says it was not analysed further;
3. on the frontal images, in one batch per model: the finding classifier (14 ChestX-ray14 labels) and
   the YOLO detector of the emergency-department triage service, and the four-class classifier(s) of
   the four-class design (COVID-19 / normal / pneumonia / tuberculosis; ResNet-18 by default,
   ``cxr.four_class_models`` names which); the source designs are listed in :mod:`models`;
4. per frontal image: the top findings (``cxr.top_findings``, at most three by default: the most
   probable of the 14 labels at or above their thresholds, most probable first, with their
   probabilities; none on an image without findings. ``cxr.top_findings_present_only: false`` ranks
   all 14 whatever their thresholds, as the triage service shows them) and a triage level from the
   per-finding thresholds of ``cxr.triage`` (urgent when any finding, class or box of an ``urgent``
   key reaches its threshold, else priority likewise, else routine);
5. objects in the source study: one TID 1500 SR for the series (``sr_writer.sr``); per frontal image
   a GSPS with the boxes, their labels and a caption with the top findings and triage
   (``sr_writer.gsps``; an image without boxes still gets one, with the caption only, so that a
   radiologist sees the triage on the image); with ``cxr.secondary_capture: true`` a Secondary
   Capture per frontal image with all of it burned in (``sr_writer.sc``).

Models: only the view filter is required (``PIPELINE_MODELS``). The finding classifier, four-class
classifier(s) and detector are used when installed: one that is configured but absent is reported
once per worker at start-up (a warning naming the model and how to build it), and the SR of each
frontal image says which analysis was not done, so a site can run the view filter alone.

The job summary records the inference time of each model and of the writers (``times_ms ...``);
``bench/cxr_latency.py`` reads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from highdicom.enum import SpecificCharacterSetValues
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset

from core.findings import AlgorithmInfo, Finding, ImageResult, SeriesResult, Triage, View, ViewResult
from models.detector import Detector
from models.errors import ModelError as ModelsModelError
from models.errors import PreprocessError
from models.finding_classifier import FindingClassifier
from models.four_class import FourClassClassifier
from models.preprocess.radiograph import radiograph_to_unit, resize_image
from models.registry import ModelRegistry
from models.view_filter import ViewFilter, header_view
from node.dicomheader import read_file
from node.errors import InputError
from node.pipelines import PipelineOutput, check_decodable_size
from sr_writer import SeriesParams, build_measurement_report, build_presentation_state, build_secondary_capture
from sr_writer.codes import finding_key

if TYPE_CHECKING:
    from node.settings import Settings

log = logging.getLogger("ainode.pipeline.cxr")

#: SOP classes analysed: CR, DX for presentation and for processing, and digital mammography is not.
#: Each result series' Series Number: ``result_series_number`` plus this (docs/conformance.md lists them).
SERIES_OFFSETS = {"SR": 0, "GSPS": 1, "SC": 2}
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (scanned films), when routed here
}

#: Errors a model's preprocessing or inference raises for one bad image (not a bug of ours).
_IMAGE_ERRORS = (PreprocessError, ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError)


class RadiographModel(Protocol):
    """What the pipeline needs of a finding classifier, four-class classifier or detector."""

    @property
    def algorithm(self) -> AlgorithmInfo: ...

    def predict(self, images: Sequence[np.ndarray], uids: Sequence[str]) -> list[list[Finding]]: ...


@dataclass(frozen=True)
class TriageRules:
    """Thresholds per finding key: ``urgent`` first, then ``priority``; otherwise routine."""

    urgent: Mapping[str, float] = field(default_factory=dict)
    priority: Mapping[str, float] = field(default_factory=dict)

    def level(self, findings: Sequence[Finding]) -> Triage:
        """The triage level of one image's findings, classes and boxes (highest probability per key)."""
        best: dict[str, float] = {}
        for f in findings:
            key = finding_key(f.label)
            best[key] = max(best.get(key, 0.0), f.probability)
        if any(best.get(key, -1.0) >= threshold for key, threshold in self.urgent.items()):
            return "urgent"
        if any(best.get(key, -1.0) >= threshold for key, threshold in self.priority.items()):
            return "priority"
        return "routine"


def top_findings(findings: Sequence[Finding], count: int = 3, present_only: bool = False) -> list[str]:
    """Labels of the ``count`` most probable multi-label findings (group ``finding``), most probable first.

    With ``present_only``, only findings at or above their threshold are ranked (fewer than ``count``, or
    none, on an image without findings).
    """
    ranked = sorted(
        (f for f in findings if f.group == "finding" and (f.present or not present_only)),
        key=lambda f: f.probability,
        reverse=True,
    )
    labels: list[str] = []
    for f in ranked:
        if f.label not in labels:
            labels.append(f.label)
    return labels[:count]


@dataclass
class _Stopwatch:
    """Seconds spent per step, summed over the series."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        return "times_ms " + " ".join(f"{step}={s * 1000:.0f}" for step, s in self.seconds.items())


@dataclass
class _Decoded:
    ds: Dataset
    unit: np.ndarray


class CxrPipeline:
    """The chest radiograph pipeline; one instance per worker (see the module docstring).

    Parameters
    ----------
    view_filter : ViewFilter
        The frontal/lateral filter of the MIMIC-CXR view-filter design (required).
    finding_model, detector : RadiographModel or None
        The emergency-department triage service's 14-label classifier and box detector; None when not
        installed.
    four_class_models : sequence of RadiographModel
        The four-class design's classifier(s), run in this order.
    missing : mapping of str to str
        Analyses configured but not available (model name -> reason), said in each frontal image's SR.
    triage : TriageRules
        Per-finding thresholds of the triage levels.
    parallel_models : bool
        Run the models of one study at once, in threads (see :meth:`_run_models`).
    """

    name = "cxr"

    def __init__(
        self,
        view_filter: ViewFilter,
        *,
        uid_root: str,
        finding_model: RadiographModel | None = None,
        four_class_models: Sequence[RadiographModel] = (),
        detector: RadiographModel | None = None,
        missing: Mapping[str, str] | None = None,
        triage: TriageRules | None = None,
        top_count: int = 3,
        top_present_only: bool = False,
        presentation_state: bool = True,
        secondary_capture: bool = False,
        parallel_models: bool = True,
        series_number: int = 990,
        institution_name: str | None = None,
    ) -> None:
        self.view_filter = view_filter
        self.finding_model = finding_model
        self.four_class_models = list(four_class_models)
        self.detector = detector
        self.missing = dict(missing or {})
        self.triage = triage or TriageRules()
        self.top_count = top_count
        self.top_present_only = top_present_only
        self.presentation_state = presentation_state
        self.secondary_capture = secondary_capture
        self.uid_root = uid_root
        self.series_number = series_number
        self.institution_name = institution_name
        count = len(self._models())
        # Threads of this worker's own: the models of one study run at once (see _run_models).
        self._pool = (
            ThreadPoolExecutor(max_workers=count, thread_name_prefix="ainode-cxr-model")
            if parallel_models and count > 1
            else None
        )

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: Settings) -> CxrPipeline:
        """The pipeline as the node's settings configure it (``cxr`` section of ``node.yaml``).

        A model after the view filter that is configured but not installed is a warning, one that
        cannot be loaded an error in the log; either way the pipeline runs without it and each frontal
        image's SR says so.

        Raises
        ------
        node.errors.ModelUnavailable
            When the view filter cannot be loaded.
        """
        from node.errors import ModelUnavailable

        config = settings.cxr
        threads = settings.threads_per_model
        try:
            view_filter = ViewFilter.from_manifest(registry.require("cxr-view-filter"), threads=threads)
        except ModelsModelError as exc:
            raise ModelUnavailable(str(exc)) from exc
        missing: dict[str, str] = {}

        def load(
            name: str | None, model_cls: type[FindingClassifier | FourClassClassifier | Detector]
        ) -> RadiographModel | None:
            if not name:
                return None
            try:
                manifest = registry.require(name)
            except ModelsModelError as exc:
                missing[name] = "model not installed"
                log.warning("cxr: model %r is not available, frontal images are analysed without it: %s", name, exc)
                return None
            try:
                model: RadiographModel = model_cls.from_manifest(manifest, threads=threads)
            except (ModelsModelError, ImportError) as exc:
                # Broken weights or a backend's extra not installed: the view filter and the other models
                # still run, and every SR says which analysis is missing, rather than no cxr results at all.
                missing[name] = "model cannot be loaded"
                log.error("cxr: model %r cannot be loaded, frontal images are analysed without it: %s", name, exc)
                return None
            return model

        finding_model = load(config.finding_model, FindingClassifier)
        four_class = [m for m in (load(n, FourClassClassifier) for n in config.four_class_models) if m is not None]
        detector = load(config.detector_model, Detector)
        return cls(
            view_filter,
            uid_root=settings.uid_root,
            finding_model=finding_model,
            four_class_models=four_class,
            detector=detector,
            missing=missing,
            triage=TriageRules(dict(config.triage.urgent), dict(config.triage.priority)),
            top_count=config.top_findings,
            top_present_only=config.top_findings_present_only,
            presentation_state=config.presentation_state,
            secondary_capture=config.secondary_capture,
            parallel_models=config.parallel_models,
            series_number=settings.result_series_number,
            institution_name=settings.institution_name,
        )

    # Analysis ------------------------------------------------------------------------------------
    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        """Analyse one series of radiographs; see the module docstring.

        Raises
        ------
        InputError
            When no image of the series can be read and decoded.
        """
        clock = _Stopwatch()
        problems: list[str] = []
        with clock("decode"):
            decoded = self._decode(paths, problems)
        if not decoded:
            raise InputError("no analysable image in the series: " + "; ".join(problems))
        with clock("view_filter"):
            views = self._views(decoded)
        frontal = [d for d, v in zip(decoded, views, strict=False) if v.view == "frontal"]
        per_image: dict[str, list[Finding]] = {str(d.ds.SOPInstanceUID): [] for d in frontal}
        with clock("models"):  # all models, wall clock (they may overlap: parallel_models)
            ran = self._run_models(frontal)
        for model, outputs, failures, seconds in ran:
            clock.seconds[model.algorithm.name] = seconds
            problems += failures
            for uid, found in zip(per_image, outputs, strict=False):
                per_image[uid].extend(found)

        images: list[ImageResult] = []
        for d, view in zip(decoded, views, strict=False):
            uid = str(d.ds.SOPInstanceUID)
            if view.view != "frontal":
                images.append(
                    ImageResult(uid, view=view, analysed_further=False, note="lateral view: not analysed further")
                )
                continue
            findings = per_image[uid]
            top = top_findings(findings, self.top_count, self.top_present_only) if self.finding_model else []
            images.append(
                ImageResult(
                    uid,
                    view=view,
                    findings=findings,
                    analysed_further=True,
                    note=self._missing_note(),
                    top_findings=top,
                    triage=self.triage.level(findings) if findings else None,
                )
            )
        result = SeriesResult(
            pipeline=self.name,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            algorithms=self._algorithms(for_boxes=False),
            images=images,
            supersedes=[str(p.SOPInstanceUID) for p in predecessors],
        )
        objects = self._write(result, decoded, predecessors, clock, problems)
        summary = f"{_describe(images)}; {clock.summary()}"  # the executor logs it with the job
        return PipelineOutput(result=result, objects=objects, summary=summary, warnings=problems)

    def _models(self) -> list[RadiographModel]:
        models: list[RadiographModel] = [self.finding_model] if self.finding_model else []
        return models + self.four_class_models + ([self.detector] if self.detector else [])

    def _algorithms(self, *, for_boxes: bool) -> list[AlgorithmInfo]:
        """View filter first (the SR's observer). Last: for the SR, the finding classifier (its triage and
        top-findings group); for GSPS and SC, the detector (they name who drew the boxes)."""
        others = [m.algorithm for m in self.four_class_models]
        detector = [self.detector.algorithm] if self.detector else []
        findings = [self.finding_model.algorithm] if self.finding_model else []
        ordered = others + (findings + detector if for_boxes else detector + findings)
        return [self.view_filter.algorithm, *ordered]

    def _missing_note(self) -> str | None:
        if not self.missing:
            return None
        return "not analysed by: " + ", ".join(f"{name} ({why})" for name, why in self.missing.items())

    def _decode(self, paths: Sequence[Path], problems: list[str]) -> list[_Decoded]:
        decoded = []
        for path in paths:
            try:
                ds = read_file(path)
            except Exception as exc:  # pydicom raises many types for damaged files
                problems.append(f"{Path(path).name}: unreadable ({exc})")
                continue
            uid = ds.get("SOPInstanceUID", Path(path).name)
            if "PixelData" not in ds:
                problems.append(f"{uid}: no pixel data")
                continue
            try:
                check_decodable_size(ds)
                unit = radiograph_to_unit(ds)
            except (InputError, *_IMAGE_ERRORS) as exc:  # one damaged image fails alone
                problems.append(f"{uid}: {exc}")
                continue
            decoded.append(_Decoded(ds, unit))
        return decoded

    def _views(self, decoded: Sequence[_Decoded]) -> list[ViewResult]:
        vf = self.view_filter
        spec = vf.manifest.input
        batch = np.stack([resize_image(d.unit, spec.height, spec.width) for d in decoded])
        return [
            _view_result(vf, d.ds, float(p)) for d, p in zip(decoded, vf.lateral_probabilities(batch), strict=False)
        ]

    def _run_models(
        self, frontal: Sequence[_Decoded]
    ) -> list[tuple[RadiographModel, list[list[Finding]], list[str], float]]:
        """Each model on the frontal images: its findings per image, its failures, its seconds (wall clock).

        With ``parallel_models`` the models run at once in threads (ONNX Runtime releases the GIL while it
        computes), which on a few cores cuts the latency of one study to about that of the slowest model.
        """
        models = self._models()
        if not frontal or not models:
            return []
        if self._pool is None or len(models) == 1:
            return [(m, *self._run(m, frontal)) for m in models]
        futures = [self._pool.submit(self._run, m, frontal) for m in models]
        return [(m, *f.result()) for m, f in zip(models, futures, strict=False)]

    @staticmethod
    def _run(model: RadiographModel, frontal: Sequence[_Decoded]) -> tuple[list[list[Finding]], list[str], float]:
        """One batch over the frontal images; when the batch fails, each image alone, so a bad one fails alone."""
        start = time.perf_counter()
        uids = [str(d.ds.SOPInstanceUID) for d in frontal]
        failures: list[str] = []
        try:
            outputs = model.predict([d.unit for d in frontal], uids)
        except _IMAGE_ERRORS:
            outputs = []
            for d, uid in zip(frontal, uids, strict=False):
                try:
                    outputs.append(model.predict([d.unit], [uid])[0])
                except _IMAGE_ERRORS as exc:
                    failures.append(f"{uid}: {model.algorithm.name} failed: {exc}")
                    outputs.append([])
        return outputs, failures, time.perf_counter() - start

    # Writers -------------------------------------------------------------------------------------
    def _write(
        self,
        result: SeriesResult,
        decoded: Sequence[_Decoded],
        predecessors: Sequence[Dataset],
        clock: _Stopwatch,
        problems: list[str],
    ) -> list[Dataset]:
        headers = {str(d.ds.SOPInstanceUID): _header(d.ds) for d in decoded}
        analysed = [headers[i.sop_instance_uid] for i in result.images]
        params = SeriesParams(self.uid_root, self.series_number, institution_name=self.institution_name)
        with clock("sr"):
            sr = build_measurement_report(result, analysed, params, predecessors=predecessors)
        objects: list[Dataset] = [sr]
        drawn = replace(result, algorithms=self._algorithms(for_boxes=True))
        # What a GSPS or SC can show: boxes, or a caption with the top findings and the triage (a routine
        # image without findings still gets its caption, so the viewer shows that it was analysed).
        frontal = [
            i
            for i in result.images
            if i.analysed_further and (i.top_findings or i.triage is not None or any(f.region for f in i.findings))
        ]
        pixels = {str(d.ds.SOPInstanceUID): d.ds for d in decoded}
        if self.presentation_state:
            with clock("gsps"):
                objects += self._per_image(
                    drawn,
                    frontal,
                    problems,
                    "GSPS",
                    lambda one, image: build_presentation_state(
                        one,
                        [headers[image.sop_instance_uid]],
                        params.with_series_number(self.series_number + SERIES_OFFSETS["GSPS"]),
                    ),
                )
        if self.secondary_capture:
            with clock("sc"):
                objects += self._per_image(
                    drawn,
                    frontal,
                    problems,
                    "secondary capture",
                    lambda one, image: build_secondary_capture(
                        one,
                        pixels[image.sop_instance_uid],
                        params.with_series_number(self.series_number + SERIES_OFFSETS["SC"]),
                    ),
                )
        return objects

    @staticmethod
    def _per_image(
        result: SeriesResult,
        images: Sequence[ImageResult],
        problems: list[str],
        kind: str,
        build: Callable[[SeriesResult, ImageResult], Dataset],
    ) -> list[Dataset]:
        """One object per image, all in one new series (the first object's), numbered 1, 2, ...

        A writer that refuses one image (e.g. a colour radiograph for a GSPS) is a warning on the job; the
        SR and the other objects still go out.
        """
        made: list[Dataset] = []
        for image in images:
            try:
                ds = build(replace(result, images=[image]), image)
            except ValueError as exc:
                problems.append(f"{image.sop_instance_uid}: no {kind}: {exc}")
                continue
            if made:
                ds.SeriesInstanceUID = made[0].SeriesInstanceUID
                ds.InstanceNumber = len(made) + 1
            made.append(ds)
        return made


def _view_result(vf: ViewFilter, ds: Dataset, p_lateral: float) -> ViewResult:
    """As :meth:`ViewFilter.predict` decides, from a probability computed on the already decoded image."""
    view: View = "lateral" if p_lateral >= vf.threshold else "frontal"
    probability = p_lateral if view == "lateral" else 1.0 - p_lateral
    position = ds.get("ViewPosition") or None
    position = str(position).strip() or None if position is not None else None
    from_header = header_view(position)
    disagreement = from_header is not None and from_header != view and probability >= vf.disagreement_probability
    return ViewResult(view, probability, position, from_header, disagreement)


def _describe(images: Sequence[ImageResult]) -> str:
    parts = []
    for image in images:
        if image.view is None:
            continue
        text = f"{image.view.view} {image.view.probability:.2f}"
        if image.analysed_further and image.findings:
            probabilities = {f.label: f.probability for f in image.findings if f.group == "finding"}
            top = ", ".join(f"{label} {probabilities[label]:.2f}" for label in image.top_findings)
            boxes = sum(1 for f in image.findings if f.region is not None)
            text += f" (top: {top or '-'}; triage {image.triage}; boxes {boxes})"
        parts.append(text)
    return "view: " + ", ".join(parts)


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
