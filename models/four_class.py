"""COVID-19 / normal / pneumonia / tuberculosis on a frontal chest radiograph (the four-class design).

The source design is *the four-class design* (see :mod:`models`).

Input: frontal chest radiographs as :func:`models.preprocess.radiograph.radiograph_to_unit`
gives them (float 0..1, bone white, full resolution; CR/DX of PS3.3 A.2 / A.26), each
resized to the manifest's size (the source design: 256×256, scaled to 0..1) with
:func:`models.preprocess.radiograph.resize_image` and fed as one grey channel.

Models (those of the source design; ``training.architectures``): ResNet-18 (manifest
``cxr-four-class``) or the 5-layer CNN — three Conv 3×3 + ReLU + max-pooling blocks
and two fully connected layers (``cxr-four-class-cnn``) — each with a softmax over
the four classes. Its authors report accuracy 0.778 (CNN) and 0.80 (ResNet-18 with
augmentation); our figures are in the weights' model cards.

Output: one :class:`core.findings.Finding` per class per image (``group="class"``)
with the softmax probability; ``present`` is true for the most probable class only
(the classes exclude each other), whatever the manifest thresholds say. Labels are
keys of ``sr_writer.codes.CONCEPTS`` in the model's output order. A model whose last
layer gives logits says so with ``postprocessing.output: "logits"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.findings import Finding
from models.backends import InferenceModel, batch_size, check_images
from models.errors import ModelError
from models.finding_classifier import RadiographModel, label_findings, label_scores, output_kind

__all__ = ["FourClassClassifier"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum so that it cannot overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


class FourClassClassifier(RadiographModel):
    """The four-class design's single-label classifier over any backend (see the module docstring).

    Parameters
    ----------
    model : InferenceModel
        A backend whose manifest has task ``classification``, at least two
        labels and a one-channel input.

    Raises
    ------
    ModelError
        Wrong task, fewer than two labels, a multi-channel input, or an invalid
        ``postprocessing`` entry.
    """

    task = "classification"

    def __init__(self, model: InferenceModel) -> None:
        super().__init__(model)
        manifest = model.manifest
        if len(manifest.labels) < 2:
            raise ModelError(f"model {manifest.name!r}: a softmax classifier needs at least two labels")
        if manifest.input.channels != 1:
            raise ModelError(
                f"model {manifest.name!r}: the four-class classifier takes one grey channel, "
                f"not {manifest.input.channels}"
            )
        self._logits = output_kind(manifest) == "logits"
        self._batch = batch_size(manifest)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities, shape (N, classes), rows summing to 1.

        Raises
        ------
        ModelError
            If the model's output does not have one column per manifest label.
        """
        out = label_scores(self._model, images, self._batch, "classes")
        return softmax(out) if self._logits and len(out) else out

    def predict(self, images: Sequence[np.ndarray], uids: Sequence[str]) -> list[list[Finding]]:
        """Class findings of each image, in manifest label order; only the argmax is ``present``.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            ``radiograph_to_unit`` outputs (2-D, 0..1), any size.
        uids : sequence of str
            The SOP Instance UID of each image (``Finding.source_sop_uid``).

        Returns
        -------
        list of list of Finding
            Per image, one finding per class (``group="class"``).
        """
        check_images(images, uids)
        probabilities = self.probabilities(images)
        best = np.arange(len(self.labels)) == probabilities.argmax(axis=1)[:, None]
        return label_findings(self, probabilities, best, uids, "class")
