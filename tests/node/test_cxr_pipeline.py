"""The ``cxr`` pipeline in-process: view filter, models on frontal images only, top findings, triage, objects.

The view filter is the real committed model; the finding classifier, four-class
classifier and detector are small scripted models (:class:`ScriptedModel`) that
answer from a table, so that each rule of the pipeline is checked against
known probabilities. The objects written are read back as a viewer would and
checked with dciodvfy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.findings import AlgorithmInfo, Finding, Region
from models.errors import PreprocessError
from models.registry import ModelRegistry
from models.view_filter import ViewFilter
from node.errors import ConfigError, InputError
from node.pipelines import PIPELINE_MODELS
from node.pipelines.cxr import CxrPipeline, TriageRules, top_findings
from node.settings import DEFAULT_CONFIG_FILE, DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE, Settings, load_settings
from sr_writer.codes import CHESTXRAY14_LABELS, code
from tests.helpers import assert_dciodvfy_clean, lateral_radiograph
from tests.integration.srread import coded_values, texts
from training.phantoms import chest_phantom, phantom_dataset

UID_ROOT = "1.2.826.0.1.3680043.8.498.1"
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TRIAGE = code("triage_priority").value


class ScriptedModel:
    """A finding classifier, four-class classifier or detector answering from a table.

    ``probabilities`` gives each label's output; a ``detection`` model returns one
    box per entry of ``boxes``. A blank image (no contrast at all) is refused as
    a model's preprocessing would refuse it.
    """

    def __init__(
        self,
        name: str,
        group: str,
        probabilities: dict[str, float],
        boxes: dict[str, Region] | None = None,
        threshold: float = 0.5,
    ) -> None:
        self._algorithm = AlgorithmInfo(name=name, version="test-1", demo=True)
        self.group = group
        self.probabilities = probabilities
        self.boxes = boxes or {}
        self.threshold = threshold

    @property
    def algorithm(self) -> AlgorithmInfo:
        return self._algorithm

    def predict(self, images: Sequence[np.ndarray], uids: Sequence[str]) -> list[list[Finding]]:
        out = []
        for image, uid in zip(images, uids, strict=False):
            if float(image.std()) == 0.0:
                raise PreprocessError(f"image {uid} is blank")
            if self.group == "detection":
                out.append(
                    [
                        Finding(
                            label,
                            self.probabilities[label],
                            True,
                            region=box,
                            source_sop_uid=uid,
                            group="detection",
                            algorithm=self._algorithm.name,
                        )
                        for label, box in self.boxes.items()
                    ]
                )
            elif self.group == "class":
                best = max(self.probabilities, key=self.probabilities.__getitem__)
                out.append(
                    [
                        Finding(
                            label, p, label == best, source_sop_uid=uid, group="class", algorithm=self._algorithm.name
                        )
                        for label, p in self.probabilities.items()
                    ]
                )
            else:
                out.append(
                    [
                        Finding(
                            label,
                            p,
                            p >= self.threshold,
                            source_sop_uid=uid,
                            group="finding",
                            algorithm=self._algorithm.name,
                        )
                        for label, p in self.probabilities.items()
                    ]
                )
        return out


FINDINGS = {label: 0.05 for label in CHESTXRAY14_LABELS} | {"nodule": 0.91, "pneumothorax": 0.62, "mass": 0.55}
NODULE_BOX = Region(300.0, 180.0, 340.0, 220.0)


@pytest.fixture(scope="module")
def view_filter() -> ViewFilter:
    registry = ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE)
    return ViewFilter.from_manifest(registry.require("cxr-view-filter"))


def _pipeline(view_filter: ViewFilter, findings: dict[str, float] = FINDINGS, **kwargs: object) -> CxrPipeline:
    settings = Settings()
    defaults: dict[str, object] = dict(
        finding_model=ScriptedModel("cxr-findings", "finding", findings),
        four_class_models=[
            ScriptedModel(
                "cxr-four-class", "class", {"covid19": 0.1, "normal": 0.2, "pneumonia": 0.6, "tuberculosis": 0.1}
            )
        ],
        detector=ScriptedModel("cxr-detector", "detection", {"nodule": 0.8}, {"nodule": NODULE_BOX}),
        triage=TriageRules(settings.cxr.triage.urgent, settings.cxr.triage.priority),
    )
    defaults.update(kwargs)
    return CxrPipeline(view_filter, uid_root=UID_ROOT, **defaults)  # type: ignore[arg-type]


def _frontal(folder: Path, seed: int = 3, study_uid: str | None = None, name: str = "frontal.dcm") -> Path:
    ds = phantom_dataset(chest_phantom(seed, ["Nodule"]), study_uid=study_uid)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _series(folder: Path, *paths: Path) -> list[Path]:
    """Put files into one series of one study (as the assembler hands them over)."""
    first = pydicom.dcmread(paths[0])
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
        ds.save_as(path, enforce_file_format=True)
    return list(paths)


def _by_class(objects: list[pydicom.Dataset], sop_class: str) -> list[pydicom.Dataset]:
    return [ds for ds in objects if str(ds.SOPClassUID) == sop_class]


def _saved(ds: pydicom.Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_frontal_image_gets_top_three_triage_boxes_sr_and_gsps(tmp_path: Path, view_filter: ViewFilter) -> None:
    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    output = _pipeline(view_filter).analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])

    [image] = output.result.images
    assert image.view is not None and image.view.view == "frontal"
    assert image.top_findings == ["nodule", "pneumothorax", "mass"]  # most probable first
    assert image.triage == "urgent"  # pneumothorax 0.62 >= 0.5
    assert [f.region for f in image.findings if f.group == "detection"] == [NODULE_BOX]
    assert {f.group for f in image.findings} == {"finding", "class", "detection"}
    assert not _by_class(output.objects, SC_CLASS)  # off by default

    sr = output.objects[0]
    assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"
    assert [m.lower() for m in coded_values(sr, TRIAGE)] == ["urgent"]
    [top] = [t for t in texts(sr) if t.startswith("Top findings")]
    assert top.index("Nodule") < top.index("Pneumothorax") < top.index("Mass")
    [gsps] = _by_class(output.objects, PR_CLASS)
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    drawn = gsps.GraphicAnnotationSequence[0]
    assert drawn.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    corners = np.array(drawn.GraphicObjectSequence[0].GraphicData).reshape(-1, 2)
    assert corners.min(axis=0).tolist() == [300.0, 180.0] and corners.max(axis=0).tolist() == [340.0, 220.0]
    captions = [t.UnformattedTextValue for t in drawn.TextObjectSequence]
    assert any("URGENT" in c and "Nodule 0.91" in c for c in captions), captions
    for ds in output.objects:
        assert_dciodvfy_clean(_saved(ds, tmp_path))
    # Every model's inference time and the writers' are in the job summary (bench/cxr_latency.py reads them).
    for step in ("decode", "view_filter", "models", "cxr-findings", "cxr-four-class", "cxr-detector", "sr", "gsps"):
        assert f" {step}=" in output.summary, output.summary


def test_triage_levels_follow_the_configured_thresholds() -> None:
    rules = TriageRules(urgent={"pneumothorax": 0.5}, priority={"nodule": 0.6, "tuberculosis": 0.5})

    def finding(label: str, p: float, group: str = "finding") -> Finding:
        return Finding(label, p, p >= 0.5, group=group)  # type: ignore[arg-type]

    assert rules.level([finding("pneumothorax", 0.5), finding("nodule", 0.9)]) == "urgent"  # at the threshold
    assert rules.level([finding("pneumothorax", 0.49), finding("nodule", 0.6)]) == "priority"
    assert rules.level([finding("pneumothorax", 0.49), finding("nodule", 0.59)]) == "routine"
    assert rules.level([finding("tuberculosis", 0.7, "class")]) == "priority"  # a four-class output counts
    box = Finding("pneumothorax", 0.8, True, region=Region(1, 1, 5, 5), group="detection")
    assert rules.level([finding("pneumothorax", 0.1), box]) == "urgent"  # so does a box's confidence
    assert rules.level([]) == "routine"
    # Aliases and capitals are the same finding.
    assert TriageRules(urgent={"effusion": 0.5}).level([finding("Pleural_Effusion", 0.7)]) == "urgent"


def test_top_findings_rank_only_the_fourteen_labels() -> None:
    found = [
        Finding("mass", 0.3, False),
        Finding("nodule", 0.8, True),
        Finding("edema", 0.5, True),
        Finding("pneumonia", 0.99, True, group="class"),
        Finding("fibrosis", 0.95, True, region=Region(0, 0, 2, 2), group="detection"),
    ]
    assert top_findings(found) == ["nodule", "edema", "mass"]
    assert top_findings(found, 1) == ["nodule"]
    assert top_findings(found, present_only=True) == ["nodule", "edema"]  # mass is below its threshold
    assert top_findings([Finding("mass", 0.3, False)], present_only=True) == []


def test_by_default_an_image_without_findings_has_no_top_finding(tmp_path: Path, view_filter: ViewFilter) -> None:
    # Ranking fourteen near-zero probabilities would name the label with the highest base rate.
    assert Settings().cxr.top_findings_present_only is True
    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    quiet = {label: 0.1 for label in CHESTXRAY14_LABELS}
    pipeline = _pipeline(
        view_filter,
        quiet,
        top_present_only=True,
        four_class_models=[],
        detector=ScriptedModel("cxr-detector", "detection", {}, {}),
    )
    output = pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])
    [image] = output.result.images
    assert image.top_findings == [] and image.triage == "routine"
    sr = output.objects[0]
    assert "Top findings: none at or above its threshold" in texts(sr)
    louder = _pipeline(view_filter, {**quiet, "nodule": 0.9, "mass": 0.7}, top_present_only=True, four_class_models=[])
    [image] = louder.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path]).result.images
    assert image.top_findings == ["nodule", "mass"]


def test_routine_image_still_gets_a_gsps_with_the_caption(tmp_path: Path, view_filter: ViewFilter) -> None:
    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    quiet = {label: 0.1 for label in CHESTXRAY14_LABELS}
    pipeline = _pipeline(
        view_filter, quiet, detector=ScriptedModel("cxr-detector", "detection", {}, {}), four_class_models=[]
    )
    output = pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])
    [image] = output.result.images
    assert image.triage == "routine" and len(image.top_findings) == 3
    [gsps] = _by_class(output.objects, PR_CLASS)
    drawn = gsps.GraphicAnnotationSequence[0]
    assert "GraphicObjectSequence" not in drawn  # no box
    assert any("ROUTINE" in t.UnformattedTextValue for t in drawn.TextObjectSequence)


def test_lateral_image_stops_after_the_view_filter(tmp_path: Path, view_filter: ViewFilter) -> None:
    frontal = _frontal(tmp_path)
    lateral = lateral_radiograph(tmp_path)
    paths = _series(tmp_path, frontal, lateral)
    first = pydicom.dcmread(frontal, stop_before_pixels=True)
    lateral_uid = str(pydicom.dcmread(lateral, stop_before_pixels=True).SOPInstanceUID)

    output = _pipeline(view_filter).analyse(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), paths)
    by_uid = {i.sop_instance_uid: i for i in output.result.images}
    side = by_uid[lateral_uid]
    assert side.view is not None and side.view.view == "lateral"
    assert not side.analysed_further and side.findings == [] and side.triage is None and not side.top_findings
    assert by_uid[str(first.SOPInstanceUID)].findings  # the frontal one was analysed
    sr = output.objects[0]
    assert any("not analysed further" in t for t in texts(sr))
    [gsps] = _by_class(output.objects, PR_CLASS)  # only for the frontal image
    assert [a.ReferencedImageSequence[0].ReferencedSOPInstanceUID for a in gsps.GraphicAnnotationSequence] == [
        first.SOPInstanceUID
    ]

    only_lateral = _pipeline(view_filter).analyse(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), [lateral])
    assert [str(ds.SOPClassUID) for ds in only_lateral.objects] == ["1.2.840.10008.5.1.4.1.1.88.34"]  # SR only


def test_secondary_capture_when_switched_on(tmp_path: Path, view_filter: ViewFilter) -> None:
    path = _frontal(tmp_path)
    source = pydicom.dcmread(path)
    output = _pipeline(view_filter, secondary_capture=True).analyse(
        str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path]
    )
    [sc] = _by_class(output.objects, SC_CLASS)
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    # The box is burned in: the border of the nodule box is coloured, the source is grey.
    assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
    edge = sc.pixel_array[200, 299:302]
    assert (edge[:, 0].astype(int) - edge[:, 2].astype(int)).max() > 100, edge
    assert "DEMO" in sc.SeriesDescription
    assert_dciodvfy_clean(_saved(sc, tmp_path))


def test_bad_image_fails_alone(tmp_path: Path, view_filter: ViewFilter) -> None:
    good = _frontal(tmp_path, name="good.dcm")
    short = _frontal(tmp_path, seed=4, name="short.dcm")
    blank = _frontal(tmp_path, seed=5, name="blank.dcm")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    paths = _series(tmp_path, good, short, blank)
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixels: cannot be decoded
    ds.save_as(short, enforce_file_format=True)
    ds = pydicom.dcmread(blank)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 4000, np.uint16).tobytes()  # decodes, but a model refuses it
    ds.save_as(blank, enforce_file_format=True)
    uids = {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    first = pydicom.dcmread(good, stop_before_pixels=True)

    output = _pipeline(view_filter).analyse(
        str(first.StudyInstanceUID), str(first.SeriesInstanceUID), [*paths, garbage]
    )
    by_uid = {i.sop_instance_uid: i for i in output.result.images}
    assert uids["short.dcm"] not in by_uid
    assert by_uid[uids["good.dcm"]].top_findings == ["nodule", "pneumothorax", "mass"]
    blank_result = by_uid[uids["blank.dcm"]]
    assert blank_result.view is not None and blank_result.view.view == "frontal"
    assert blank_result.findings == []  # every model refused it, in a batch with the good one
    warnings = "\n".join(output.warnings)
    assert uids["short.dcm"] in warnings and "garbage.dcm" in warnings
    assert f"{uids['blank.dcm']}: cxr-findings failed" in warnings

    with pytest.raises(InputError, match="no analysable image"):
        _pipeline(view_filter).analyse(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), [short, garbage])


def test_view_filter_only_site_says_what_was_not_done(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only the view filter is required: other models configured but absent are a warning and a note in the SR."""
    assert PIPELINE_MODELS["cxr"] == ("cxr-view-filter",)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "cxr-view-filter").symlink_to(DEFAULT_MODELS_DIR / "cxr-view-filter")
    settings = Settings(models_dir=models_dir, models_file=None, data_dir=tmp_path / "data")
    registry = ModelRegistry.discover(settings.models_dir, None)
    with caplog.at_level(logging.WARNING, logger="ainode.pipeline.cxr"):
        pipeline = CxrPipeline.from_settings(registry, settings)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("cxr-findings", "cxr-four-class", "cxr-detector"):
        assert name in warned

    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    output = pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])
    [image] = output.result.images
    assert image.analysed_further and image.findings == [] and image.triage is None
    assert [str(ds.SOPClassUID) for ds in output.objects] == ["1.2.840.10008.5.1.4.1.1.88.34"]
    note = " ".join(texts(output.objects[0]))
    assert "not analysed by: cxr-findings (model not installed)" in note and "cxr-detector" in note


def test_cxr_settings_from_yaml_and_their_errors(tmp_path: Path) -> None:
    shipped = load_settings(DEFAULT_CONFIG_FILE, environ={})
    assert shipped.cxr == Settings().cxr  # the documented defaults are the embedded ones
    assert shipped.cxr.triage.urgent == {"pneumothorax": 0.5} and shipped.cxr.secondary_capture is False

    config = tmp_path / "node.yaml"
    config.write_text(
        "cxr:\n  secondary_capture: true\n  four_class_models: [cxr-four-class, cxr-four-class-cnn]\n"
        "  triage: {urgent: {Pneumothorax: 0.4}, priority: {}}\n"
    )
    settings = load_settings(config, environ={"AINODE_CXR__TOP_FINDINGS": "2"})
    assert settings.cxr.secondary_capture and settings.cxr.top_findings == 2
    assert settings.cxr.four_class_models == ["cxr-four-class", "cxr-four-class-cnn"]
    assert settings.cxr.triage.urgent == {"pneumothorax": 0.4} and settings.cxr.triage.priority == {}

    config.write_text("cxr:\n  triage: {urgent: {pneumo: 0.5}}\n")
    with pytest.raises(ConfigError, match=r"cxr\.triage\.urgent: .*'pneumo'.*pneumothorax"):
        load_settings(config, environ={})
    config.write_text("cxr:\n  triage: {priority: {nodule: 1.5}}\n")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_settings(config, environ={})


def _tiny_onnx_models(models_dir: Path) -> None:
    """Write tiny ONNX models with the real manifests' tasks and labels: a linear 14-label classifier and
    four-class classifier on 32×32, and a "detector" whose raw YOLO output is one fixed nodule box."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.manifest import sha256_file
    from sr_writer.codes import FOUR_CLASS_LABELS

    rng = np.random.default_rng(0)

    def save(
        name: str, graph: onnx.GraphProto, task: str, labels: Sequence[str], size: int, channels: int, layout: str
    ) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        folder = models_dir / name
        folder.mkdir()
        onnx.save(model, folder / "model.onnx")
        (folder / "model.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "test-1",
                    "task": task,
                    "backend": "onnx",
                    "weights": "model.onnx",
                    "sha256": sha256_file(folder / "model.onnx"),
                    "labels": [{"key": k, "display": k} for k in labels],
                    "input": {"height": size, "width": size, "channels": channels, "layout": layout},
                    "demo": True,
                }
            )
        )

    def classifier(name: str, labels: Sequence[str], final: str, task: str) -> None:
        weights = numpy_helper.from_array(rng.normal(0, 0.05, (32 * 32, len(labels))).astype(np.float32), "w")
        shape = numpy_helper.from_array(np.array([-1, 32 * 32], np.int64), "shape")
        nodes = [
            helper.make_node("Reshape", ["x", "shape"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["z"]),
            helper.make_node(final, ["z"], ["y"], **({"axis": 1} if final == "Softmax" else {})),
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 32, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(labels)])],
            [weights, shape],
        )
        save(name, graph, task, labels, 32, 1, "NHWC")

    classifier("cxr-findings", CHESTXRAY14_LABELS, "Sigmoid", "multilabel-classification")
    classifier("cxr-four-class", FOUR_CLASS_LABELS, "Softmax", "classification")
    raw = np.zeros((1, 5, 8), np.float32)
    raw[0, :, 0] = [100, 80, 30, 30, 0.9]  # cx, cy, w, h on the 128×128 canvas, nodule score
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m2"]),
        helper.make_node("Mul", ["m2", "zero"], ["m3"]),
        helper.make_node("Add", ["m3", "raw"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8])],
        [
            numpy_helper.from_array(raw, "raw"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        ],
    )
    save("cxr-detector", graph, "detection", ["nodule"], 128, 3, "NCHW")
    (models_dir / "cxr-view-filter").symlink_to(DEFAULT_MODELS_DIR / "cxr-view-filter")


@pytest.mark.parametrize("parallel", [True, False])
def test_installed_models_are_loaded_from_the_registry(tmp_path: Path, parallel: bool) -> None:
    """from_settings loads the real model classes over ONNX; the detector's box lands in source pixels."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _tiny_onnx_models(models_dir)
    settings = Settings(
        models_dir=models_dir,
        models_file=None,
        data_dir=tmp_path / "data",
        cxr={"parallel_models": parallel, "secondary_capture": True},
    )
    pipeline = CxrPipeline.from_settings(ModelRegistry.discover(models_dir, None), settings)
    assert not pipeline.missing

    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    output = pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])
    [image] = output.result.images
    assert sum(f.group == "finding" for f in image.findings) == 14
    assert sum(f.group == "class" for f in image.findings) == 4
    [box] = [f for f in image.findings if f.group == "detection"]
    # 512×512 source letterboxed to 128×128: a gain of 4, no padding.
    assert (box.label, box.region) == ("nodule", Region(340.0, 260.0, 460.0, 380.0))
    probabilities = {f.label: f.probability for f in image.findings if f.group == "finding"}
    assert image.top_findings == sorted(probabilities, key=probabilities.__getitem__, reverse=True)[:3]
    assert [a.name for a in output.result.algorithms] == [
        "cxr-view-filter",
        "cxr-four-class",
        "cxr-detector",
        "cxr-findings",
    ]
    assert sorted(str(ds.SOPClassUID) for ds in output.objects) == sorted(
        ["1.2.840.10008.5.1.4.1.1.88.34", PR_CLASS, SC_CLASS]
    )
    assert output.warnings == []


def test_model_that_cannot_be_loaded_leaves_the_others_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _tiny_onnx_models(models_dir)
    manifest = models_dir / "cxr-detector" / "model.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "task": "classification"}))
    settings = Settings(models_dir=models_dir, models_file=None, data_dir=tmp_path / "data")
    with caplog.at_level(logging.ERROR, logger="ainode.pipeline.cxr"):
        pipeline = CxrPipeline.from_settings(ModelRegistry.discover(models_dir, None), settings)
    assert "cxr-detector" in caplog.text and "not 'detection'" in caplog.text
    path = _frontal(tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    output = pipeline.analyse(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), [path])
    [image] = output.result.images
    assert {f.group for f in image.findings} == {"finding", "class"} and len(image.top_findings) == 3
    assert "not analysed by: cxr-detector (model cannot be loaded)" in " ".join(texts(output.objects[0]))
