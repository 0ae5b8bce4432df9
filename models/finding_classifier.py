"""Fourteen NIH ChestX-ray14 findings on a frontal chest radiograph (the ED triage service's classifier).

Input: frontal chest radiographs as :func:`models.preprocess.radiograph.radiograph_to_unit`
gives them (float 0..1, bone white, full resolution; CR/DX of PS3.3 A.2 / A.26), each
resized to the manifest's ``input.height × input.width`` with
:func:`models.preprocess.radiograph.resize_image` (area average, aspect stretched —
as the training in ``training`` does) and fed as one grey channel (NHWC, or
NCHW when the manifest says so).

Model (the design of the emergency-department (ED) triage service, see :mod:`models`;
``training.architectures.finding_classifier``): an EfficientNet backbone (B0 by default;
the variant is the training's choice) → global average pooling → dropout → Dense(14,
sigmoid); 512×512 input by default. Its authors report a mean test AUC of 0.7848 on
ChestX-ray14 (0.8412 with PGGAN augmentation); our figures are in the weights' model card.

Output: one :class:`core.findings.Finding` per manifest label per image
(``group="finding"``): the label's sigmoid probability, ``present`` when it reaches
the label's threshold in the manifest (0.5 when the manifest gives none). The labels
are keys of ``sr_writer.codes.CONCEPTS`` in the model's output order. A model whose
last layer gives logits instead of probabilities says so with
``postprocessing.output: "logits"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np

from core.findings import AlgorithmInfo, Finding, FindingGroup
from models.backends import InferenceModel, algorithm_info, batch_size, check_images, load_backend
from models.errors import ModelError
from models.manifest import Manifest
from models.preprocess.radiograph import resize_image

__all__ = ["FindingClassifier", "RadiographModel", "grey_batch", "output_kind"]

DEFAULT_THRESHOLD = 0.5


def label_scores(model: InferenceModel, images: Sequence[np.ndarray], batch: int, what: str) -> np.ndarray:
    """The model's raw outputs on grey images, shape (N, labels), one backend call per ``batch`` images.

    Raises
    ------
    ModelError
        If the model's output does not have one column per manifest label (``what`` names them in the message).
    """
    manifest = model.manifest
    rows = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        out = np.asarray(model.run(grey_batch(chunk, manifest)), dtype=np.float64).reshape(len(chunk), -1)
        if out.shape[1] != len(manifest.labels):
            raise ModelError(
                f"model {manifest.name!r} gives {out.shape[1]} outputs per image; its manifest has "
                f"{len(manifest.labels)} {what}"
            )
        rows.append(out)
    return np.concatenate(rows) if rows else np.zeros((0, len(manifest.labels)))


def label_findings(
    model: RadiographModel, probabilities: np.ndarray, present: np.ndarray, uids: Sequence[str], group: FindingGroup
) -> list[list[Finding]]:
    """Per image (row), one :class:`Finding` per label of ``model`` with its probability and whether it is present."""
    return [
        [
            Finding(
                label=label,
                probability=float(p),
                present=bool(flag),
                source_sop_uid=uid,
                group=group,
                algorithm=model.manifest.name,
            )
            for label, p, flag in zip(model.labels, row, flags, strict=False)
        ]
        for uid, row, flags in zip(uids, probabilities, present, strict=False)
    ]


def grey_batch(images: Sequence[np.ndarray], manifest: Manifest) -> np.ndarray:
    """Resize grey 0..1 images to the manifest's size and lay them out as its input says.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        2-D float images in 0..1 (``radiograph_to_unit`` outputs), any size.
    manifest : Manifest
        Gives ``input.height``, ``input.width``, ``channels`` (the grey image is
        repeated when more than one) and ``layout``.

    Returns
    -------
    numpy.ndarray
        float32 of shape (N, H, W, C) or (N, C, H, W).
    """
    spec = manifest.input
    grey = np.stack([resize_image(np.asarray(image, dtype=np.float32), spec.height, spec.width) for image in images])
    if spec.layout == "NCHW":
        return np.repeat(grey[:, None, :, :], spec.channels, axis=1)
    return np.repeat(grey[:, :, :, None], spec.channels, axis=3)


def output_kind(manifest: Manifest) -> str:
    """``postprocessing.output`` of a classifier manifest: ``"probabilities"`` (default) or ``"logits"``."""
    kind = manifest.postprocessing.get("output", "probabilities")
    if kind not in ("probabilities", "logits"):
        raise ModelError(
            f"model {manifest.name!r}: postprocessing.output must be 'probabilities' or 'logits', got {kind!r}"
        )
    return str(kind)


class RadiographModel:
    """What the chest radiograph models share: a backend whose manifest has the model's task, its labels,
    how it is opened from a manifest and how result objects name it.

    A subclass sets :attr:`task`, calls ``super().__init__(model)`` first and then checks the rest of
    its manifest.

    Raises
    ------
    ModelError
        When the manifest's task is not :attr:`task`.
    """

    #: The manifest task (``task``) the model serves.
    task: ClassVar[str]

    def __init__(self, model: InferenceModel) -> None:
        manifest = model.manifest
        if manifest.task != self.task:
            raise ModelError(f"model {manifest.name!r} has task {manifest.task!r}, not {self.task!r}")
        self._model = model
        self.manifest = manifest
        self.labels = [spec.key for spec in manifest.labels]

    @classmethod
    def from_manifest(cls, manifest: Manifest, threads: int = 1) -> Self:
        """Open the model from a verified manifest (``ModelRegistry.require``) with its backend."""
        return cls(load_backend(manifest, threads=threads))

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Identification of the model for result objects."""
        return algorithm_info(self.manifest)


class FindingClassifier(RadiographModel):
    """The ED triage service's multi-label classifier over any backend (see the module docstring).

    Parameters
    ----------
    model : InferenceModel
        A backend whose manifest has task ``multilabel-classification`` and a
        one-channel input.

    Raises
    ------
    ModelError
        Wrong task, a multi-channel input, or an invalid ``postprocessing`` entry.
    """

    task = "multilabel-classification"

    def __init__(self, model: InferenceModel) -> None:
        super().__init__(model)
        manifest = model.manifest
        if manifest.input.channels != 1:
            raise ModelError(
                f"model {manifest.name!r}: the finding classifier takes one grey channel, not {manifest.input.channels}"
            )
        self.thresholds = np.array(
            [DEFAULT_THRESHOLD if spec.threshold is None else spec.threshold for spec in manifest.labels],
            dtype=np.float64,
        )
        self._logits = output_kind(manifest) == "logits"
        self._batch = batch_size(manifest)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probability of each label, shape (N, labels), one backend call per ``postprocessing.batch`` images.

        Raises
        ------
        ModelError
            If the model's output does not have one column per manifest label.
        """
        out = label_scores(self._model, images, self._batch, "labels")
        return 1.0 / (1.0 + np.exp(-out)) if self._logits else out

    def predict(self, images: Sequence[np.ndarray], uids: Sequence[str]) -> list[list[Finding]]:
        """Findings of each image, in manifest label order.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            ``radiograph_to_unit`` outputs (2-D, 0..1), any size.
        uids : sequence of str
            The SOP Instance UID of each image (``Finding.source_sop_uid``).

        Returns
        -------
        list of list of Finding
            Per image, one finding per label (``group="finding"``).
        """
        check_images(images, uids)
        probabilities = self.probabilities(images)
        return label_findings(self, probabilities, probabilities >= self.thresholds, uids, "finding")
