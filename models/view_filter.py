"""Frontal vs lateral chest radiograph filter (the MIMIC-CXR view-filter design, see :mod:`models`).

Input: chest CR/DX datasets (PS3.3 A.2 / A.26) with grey or colour pixels. Each is
turned into a 64×64 float image in 0..1, bone white, by
:func:`models.preprocess.radiograph.radiograph_input` (Modality LUT, VOI window or a
percentile window, MONOCHROME1 inverted, first frame, area-average resize with the
aspect stretched as in the source design's training).

Model (as in the source design; ``training.view_filter``): 64×64×1 → Conv2D 3×3 16, 32,
64, 128 (valid, ReLU) with 2×2 max-pooling after the first three → 4×4 average
pooling → Dense 64 ReLU → Dense 1 sigmoid = P(lateral); 105,473 parameters (the source
design: 105,761 with three channels). Its authors report validation accuracy 1.0 and
99.74 % on 38,552 further MIMIC-CXR images; our figures on held-out patients are in the
weights' ``MODEL_CARD.md``.

Output: one :class:`core.findings.ViewResult` per dataset: the predicted view
(``frontal``/``lateral``) and its probability (0.5..1), the header's View Position
(0018,5101) and what it means, and ``disagreement`` when the header names the other
view and the prediction's probability reaches the manifest's
``postprocessing.disagreement_probability`` (default 0.9).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.findings import AlgorithmInfo, View, ViewResult
from models.backends.onnx_backend import OnnxModel
from models.errors import ModelError, PreprocessError
from models.manifest import Manifest
from models.preprocess.radiograph import radiograph_input

__all__ = ["ViewFilter", "header_view"]

_FRONTAL = re.compile(r"^(AP|PA)(?![A-Z])")
_LATERAL = {"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"}
DEFAULT_DISAGREEMENT_PROBABILITY = 0.9


def header_view(view_position: str | None) -> View | None:
    """What a View Position (0018,5101) value says about frontal vs lateral.

    ``AP``/``PA`` and variants such as ``AP SUPINE`` or ``PA-ERECT`` → frontal;
    ``LL``, ``RL``, ``LATERAL``, ``LAT`` → lateral; anything else (decubitus
    ``RLD``/``LLD``, obliques, empty) → None.
    """
    if not view_position:
        return None
    value = str(view_position).strip().upper()
    if _FRONTAL.match(value):
        return "frontal"
    if value in _LATERAL:
        return "lateral"
    return None


class ViewFilter:
    """The MIMIC-CXR view-filter design over an ONNX session (see the module docstring)."""

    def __init__(self, model: OnnxModel) -> None:
        manifest = model.manifest
        if manifest.task != "view-filter":
            raise ModelError(f"model {manifest.name!r} has task {manifest.task!r}, not 'view-filter'")
        spec = manifest.input
        if spec.channels != 1:
            raise ModelError(f"model {manifest.name!r}: the view filter takes one grey channel, not {spec.channels}")
        self._model = model
        self.manifest = manifest
        try:
            threshold = manifest.label("lateral").threshold
        except KeyError as exc:
            raise ModelError(f"model {manifest.name!r} has no 'lateral' label") from exc
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.disagreement_probability = float(
            manifest.postprocessing.get("disagreement_probability", DEFAULT_DISAGREEMENT_PROBABILITY)
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, threads: int = 1) -> ViewFilter:
        """Create the filter from a verified manifest (``ModelRegistry.require``)."""
        return cls(OnnxModel(manifest, threads=threads))

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Identification of the model for result objects."""
        m = self.manifest
        return AlgorithmInfo(
            name=m.name, version=m.version, manufacturer=m.manufacturer, weights_sha256=m.sha256, demo=m.demo
        )

    def lateral_probabilities(self, images: np.ndarray) -> np.ndarray:
        """P(lateral) for preprocessed images of shape (N, height, width), values 0..1."""
        spec = self.manifest.input
        batch = images[:, None, :, :] if spec.layout == "NCHW" else images[:, :, :, None]
        return self._model.run(batch.astype(np.float32, copy=False)).reshape(len(images), -1)[:, 0]

    def predict(self, datasets: Sequence[Any]) -> list[ViewResult]:
        """Classify a batch of radiographs.

        Parameters
        ----------
        datasets : sequence of pydicom.Dataset
            Datasets with pixel data; all are run as one batch.

        Raises
        ------
        PreprocessError
            If a dataset's pixels cannot be used; the message names its SOP Instance UID.
        """
        if not datasets:
            return []
        spec = self.manifest.input
        images = np.empty((len(datasets), spec.height, spec.width), dtype=np.float32)
        for i, ds in enumerate(datasets):
            try:
                images[i] = radiograph_input(ds, spec.height, spec.width)
            except PreprocessError as exc:
                uid = ds.get("SOPInstanceUID", f"#{i}")
                raise PreprocessError(f"image {uid}: {exc}") from exc
        results = []
        for ds, p_lateral in zip(datasets, self.lateral_probabilities(images), strict=False):
            p = float(p_lateral)
            view: View = "lateral" if p >= self.threshold else "frontal"
            probability = p if view == "lateral" else 1.0 - p
            position = ds.get("ViewPosition") or None
            position = str(position).strip() if position is not None else None
            from_header = header_view(position)
            disagreement = (
                from_header is not None and from_header != view and probability >= self.disagreement_probability
            )
            results.append(ViewResult(view, probability, position or None, from_header, disagreement))
        return results
