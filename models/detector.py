"""Boxes around suspicious regions of a frontal chest radiograph (the detector of the ED triage service).

Input: frontal chest radiographs as :func:`models.preprocess.radiograph.radiograph_to_unit`
gives them (float 0..1, bone white, full resolution, any size and aspect; CR/DX of
PS3.3 A.2 / A.26). Each is **letterboxed** as Ultralytics does (``LetterBox`` in
``ultralytics/data/augment.py``): scaled by ``r = min(H / rows, W / columns)`` to
``round(columns·r) × round(rows·r)`` (at least 1 pixel), centred on an ``H × W``
canvas of grey 114/255 (``postprocessing.letterbox_pad``, default 114) with
``top = round(dh / 2 - 0.1)`` and ``left = round(dw / 2 - 0.1)`` pixels of padding (the same
rounding as Ultralytics, Python's ``round``), and the grey plane is repeated into the model's channels
(RGB, NCHW, float 0..1). Shrinking is an area average (``resize_image``), as
Ultralytics' validation loader does; the geometry, which is what the boxes depend
on, is exactly Ultralytics'.

Model (the emergency-department (ED) triage service, see :mod:`models`: YOLOv5 on
ChestX-Det's classes; here an Ultralytics YOLO such as YOLOv8n, trained with the ``[yolo]``
extra and exported to ONNX, or served from its ``.pt`` with the ``ultralytics`` backend).
Its raw output is ``(N, 4 + nc, anchors)``: per anchor a box (centre x, centre y, width,
height in letterboxed pixels) and ``nc`` class scores already passed through the sigmoid
(no objectness).

Postprocessing (``decode``): per anchor the best class (or every class with
``postprocessing.multi_label: true``) is kept when its score reaches that class's
threshold (the manifest label's ``threshold``, else ``postprocessing.conf``, default
0.25); greedy non-maximum suppression per class drops a box whose IoU with a
higher-scoring box of the same class exceeds ``postprocessing.iou`` (default 0.45,
Ultralytics' default); the ``postprocessing.max_detections`` (default 20) best boxes
remain. Boxes are then mapped back through the letterbox (minus padding, divided by
the per-axis scale, as ``ultralytics.utils.ops.scale_boxes``) and clipped to the image.

Output: one :class:`core.findings.Finding` per box (``group="detection"``,
``present=True``) with the class label (a key of ``sr_writer.codes.CONCEPTS``), the
confidence as probability and the box as a :class:`core.findings.Region` in the
**source image's pixel coordinates** (column, row; 0-based; edges of pixels), best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.findings import Finding, Region
from models.backends import InferenceModel, batch_size, check_images
from models.errors import ModelError
from models.finding_classifier import RadiographModel
from models.preprocess.radiograph import resize_image

__all__ = ["Detector", "Letterbox", "letterbox", "letterbox_geometry", "decode", "nms"]

PAD_VALUE = 114.0 / 255.0  # Ultralytics' padding grey
DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.45
DEFAULT_MAX_DETECTIONS = 20


@dataclass(frozen=True)
class Letterbox:
    """Where a source image lies on the model's canvas (all in pixels)."""

    source_height: int
    source_width: int
    resized_height: int
    resized_width: int
    top: int
    left: int

    @property
    def gain_y(self) -> float:
        return self.resized_height / self.source_height

    @property
    def gain_x(self) -> float:
        return self.resized_width / self.source_width

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (K, 4) x1, y1, x2, y2 on the canvas → source pixels, clipped to the image."""
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.left) / self.gain_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.top) / self.gain_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0.0, self.source_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0.0, self.source_height)
        return out

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (K, 4) x1, y1, x2, y2 in source pixels → canvas pixels (the inverse of :meth:`to_source`)."""
        out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
        out[:, [0, 2]] = out[:, [0, 2]] * self.gain_x + self.left
        out[:, [1, 3]] = out[:, [1, 3]] * self.gain_y + self.top
        return out


def letterbox_geometry(source_shape: tuple[int, int], canvas_shape: tuple[int, int]) -> Letterbox:
    """Ultralytics' ``LetterBox.get_params`` (centred, scale-up allowed) for one image.

    Parameters
    ----------
    source_shape : (int, int)
        Rows and columns of the source image.
    canvas_shape : (int, int)
        The model's input height and width.
    """
    h0, w0 = source_shape
    height, width = canvas_shape
    r = min(height / h0, width / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    return Letterbox(h0, w0, new_h, new_w, top=round(dh - 0.1), left=round(dw - 0.1))


def letterbox(
    image: np.ndarray, canvas_shape: tuple[int, int], pad_value: float = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """Scale a 2-D 0..1 image into a ``canvas_shape`` canvas, keeping its aspect.

    The canvas is padded with ``pad_value`` (114/255 by default, Ultralytics' grey).
    """
    geometry = letterbox_geometry((int(image.shape[0]), int(image.shape[1])), canvas_shape)
    canvas = np.full(canvas_shape, pad_value, dtype=np.float32)
    resized = resize_image(np.asarray(image, dtype=np.float32), geometry.resized_height, geometry.resized_width)
    rows = slice(geometry.top, geometry.top + geometry.resized_height)
    columns = slice(geometry.left, geometry.left + geometry.resized_width)
    canvas[rows, columns] = resized
    return canvas, geometry


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with each of ``others`` (K, 4)."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0.0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0.0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression (as ``torchvision.ops.nms``): indices kept, best first.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds
    ``iou_threshold``; ties in score keep the earlier box. ``limit`` stops after
    that many boxes are kept.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def decode(
    raw: np.ndarray,
    thresholds: np.ndarray,
    *,
    iou: float = DEFAULT_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    multi_label: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's raw YOLO output into boxes on the canvas.

    Parameters
    ----------
    raw : numpy.ndarray
        (4 + nc, anchors): cx, cy, w, h, then ``nc`` class scores (0..1).
    thresholds : numpy.ndarray
        (nc,) minimum score of each class.
    iou : float
        Class-wise NMS IoU threshold.
    max_detections : int
        Most boxes returned.
    multi_label : bool
        Keep every class above its threshold per anchor (else only the best class).

    Returns
    -------
    boxes, scores, classes : numpy.ndarray
        (K, 4) x1, y1, x2, y2 on the canvas, (K,) scores and (K,) class indices, best first.
    """
    nc = len(thresholds)
    if raw.ndim != 2 or raw.shape[0] != 4 + nc:
        raise ValueError(f"raw output of shape {raw.shape} is not (4 + {nc}, anchors)")
    xywh, scores = raw[:4].T.astype(np.float64), raw[4:].T.astype(np.float64)
    if multi_label:
        anchors, classes = np.nonzero(scores >= thresholds[None, :])
    else:
        classes = scores.argmax(axis=1)
        anchors = np.nonzero(scores[np.arange(len(scores)), classes] >= thresholds[classes])[0]
        classes = classes[anchors]
    confidences = scores[anchors, classes]
    centre, size = xywh[anchors, :2], xywh[anchors, 2:]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    kept = []
    for cls in np.unique(classes):
        members = np.nonzero(classes == cls)[0]
        kept.append(members[nms(boxes[members], confidences[members], iou, limit=max_detections)])
    chosen = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    chosen = chosen[np.argsort(-confidences[chosen], kind="stable")][:max_detections]
    return boxes[chosen], confidences[chosen], classes[chosen]


class Detector(RadiographModel):
    """The ED triage service's detector over any backend (see the module docstring).

    Parameters
    ----------
    model : InferenceModel
        A backend whose manifest has task ``detection`` and one or three input channels.

    Raises
    ------
    ModelError
        Wrong task or channels, or invalid ``postprocessing`` values.
    """

    task = "detection"

    def __init__(self, model: InferenceModel) -> None:
        super().__init__(model)
        manifest = model.manifest
        if manifest.input.channels not in (1, 3):
            raise ModelError(
                f"model {manifest.name!r}: the detector takes 1 or 3 channels, not {manifest.input.channels}"
            )
        post = manifest.postprocessing
        try:
            conf = float(post.get("conf", DEFAULT_CONF))
            self.iou = float(post.get("iou", DEFAULT_IOU))
            self.max_detections = int(post.get("max_detections", DEFAULT_MAX_DETECTIONS))
            self.pad_value = float(post.get("letterbox_pad", 114)) / 255.0
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model {manifest.name!r}: invalid postprocessing value ({exc})") from exc
        if not (0.0 <= conf <= 1.0 and 0.0 <= self.iou <= 1.0 and self.max_detections >= 1):
            raise ModelError(
                f"model {manifest.name!r}: postprocessing needs conf and iou in 0..1 and max_detections ≥ 1, "
                f"got {conf}, {self.iou}, {self.max_detections}"
            )
        self.multi_label = bool(post.get("multi_label", False))
        self.thresholds = np.array([conf if s.threshold is None else s.threshold for s in manifest.labels])
        self._batch = batch_size(manifest)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterbox images into one batch laid out as the manifest says (grey repeated into channels)."""
        spec = self.manifest.input
        canvases, geometries = [], []
        for image in images:
            canvas, geometry = letterbox(np.asarray(image), (spec.height, spec.width), self.pad_value)
            canvases.append(canvas)
            geometries.append(geometry)
        grey = np.stack(canvases)
        if spec.layout == "NCHW":
            return np.repeat(grey[:, None], spec.channels, axis=1), geometries
        return np.repeat(grey[..., None], spec.channels, axis=3), geometries

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The backend's raw output for a prepared batch, checked to be (N, 4 + nc, anchors)."""
        out = np.asarray(self._model.run(batch))
        nc = len(self.labels)
        if out.ndim != 3 or out.shape[0] != len(batch) or out.shape[1] != 4 + nc:
            raise ModelError(
                f"model {self.manifest.name!r} gives output of shape {out.shape}; expected the raw YOLO layout "
                f"(N, 4 + {nc} labels, anchors) (end-to-end/NMS-included exports are not supported)"
            )
        return out

    def predict(self, images: Sequence[np.ndarray], uids: Sequence[str]) -> list[list[Finding]]:
        """Boxes found on each image, best first, in source pixel coordinates.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            ``radiograph_to_unit`` outputs (2-D, 0..1), any size and aspect.
        uids : sequence of str
            The SOP Instance UID of each image (``Finding.source_sop_uid``).

        Returns
        -------
        list of list of Finding
            Per image, one finding per box (``group="detection"``), possibly none.
        """
        check_images(images, uids)
        results: list[list[Finding]] = []
        for start in range(0, len(images), self._batch):
            batch, geometries = self.prepare(images[start : start + self._batch])
            for raw, geometry, uid in zip(self.raw(batch), geometries, uids[start : start + self._batch], strict=False):
                results.append(self._findings(raw, geometry, uid))
        return results

    def _findings(self, raw: np.ndarray, geometry: Letterbox, uid: str) -> list[Finding]:
        boxes, scores, classes = decode(
            raw, self.thresholds, iou=self.iou, max_detections=self.max_detections, multi_label=self.multi_label
        )
        findings = []
        for (x1, y1, x2, y2), score, cls in zip(geometry.to_source(boxes), scores, classes, strict=False):
            if x2 <= x1 or y2 <= y1:  # wholly in the padding: nothing of the image inside
                continue
            findings.append(
                Finding(
                    label=self.labels[int(cls)],
                    probability=float(score),
                    present=True,
                    region=Region(float(x1), float(y1), float(x2), float(y2)),
                    source_sop_uid=uid,
                    group="detection",
                    algorithm=self.manifest.name,
                )
            )
        return findings
