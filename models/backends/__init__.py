"""Inference backends: run a verified model's weights on a batch of arrays.

A manifest's ``backend`` picks one:

- ``onnx`` (:class:`~models.backends.onnx_backend.OnnxModel`): ONNX Runtime, the serving
  default; only base dependencies. On the CPU, or on the execution providers the process
  chose for its device (:func:`~models.backends.providers.set_onnx_providers`).
- ``keras`` (:class:`~models.backends.keras_backend.KerasModel`): a site's native
  ``.keras``/``.h5`` file, loaded with Keras 3 (the ``[train]`` extra).
- ``ultralytics`` (:class:`~models.backends.ultralytics_backend.UltralyticsModel`): a
  native Ultralytics YOLO ``.pt`` file (the ``[yolo]`` extra); it returns the same raw
  ``(N, 4 + nc, anchors)`` tensor as the model's ONNX export, so one decoder serves both.

Every backend has the :class:`InferenceModel` shape: a ``manifest`` and
``run(batch) -> first output`` as a NumPy array. The optional frameworks are
imported only when a manifest asks for them, so a node that serves ONNX only
never loads TensorFlow or torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from core.findings import AlgorithmInfo
from models.errors import ModelError
from models.manifest import Manifest

__all__ = [
    "InferenceModel",
    "algorithm_info",
    "batch_size",
    "check_batch",
    "check_images",
    "import_torch_first",
    "item_shape",
    "load_backend",
]


@runtime_checkable
class InferenceModel(Protocol):
    """What the model wrappers (classifiers, detector) need from a backend."""

    manifest: Manifest

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run on a batch laid out as the manifest's input says; return the first output."""
        ...


def item_shape(manifest: Manifest) -> tuple[int, int, int]:
    """Per-item input shape (without the batch axis) in the manifest's layout."""
    spec = manifest.input
    if spec.layout == "NCHW":
        return (spec.channels, spec.height, spec.width)
    return (spec.height, spec.width, spec.channels)


def check_batch(manifest: Manifest, batch: np.ndarray) -> None:
    """Raise ``ValueError`` when ``batch`` is not (N, *item_shape(manifest))."""
    item = item_shape(manifest)
    if batch.ndim != 4 or tuple(batch.shape[1:]) != item:
        raise ValueError(f"batch of shape {batch.shape} does not match (N, {', '.join(map(str, item))})")


def load_backend(manifest: Manifest, threads: int = 1) -> InferenceModel:
    """Open a model's weights with the backend its manifest names.

    Parameters
    ----------
    manifest : Manifest
        A manifest whose weights were verified (``ModelRegistry.require``).
    threads : int
        Intra-op threads of the backend (ONNX Runtime session option, TensorFlow's
        intra-op parallelism, ``torch.set_num_threads``).

    Returns
    -------
    InferenceModel
        An object with ``manifest`` and ``run(batch)``.

    Raises
    ------
    ModelError
        The backend's extra is not installed, the weights cannot be loaded, or
        the model's input disagrees with the manifest.
    """
    if threads < 1:
        raise ModelError(f"threads must be at least 1, got {threads}")
    if manifest.backend == "onnx":
        from models.backends.onnx_backend import OnnxModel

        return OnnxModel(manifest, threads=threads)
    if manifest.backend == "keras":
        from models.backends.keras_backend import KerasModel

        return KerasModel(manifest, threads=threads)
    if manifest.backend == "ultralytics":
        from models.backends.ultralytics_backend import UltralyticsModel

        return UltralyticsModel(manifest, threads=threads)
    raise ModelError(f"model {manifest.name!r}: unknown backend {manifest.backend!r}")  # pragma: no cover - Literal


def import_torch_first() -> None:
    """Import torch and torchvision before TensorFlow, when they are installed.

    TensorFlow 2.21 imported before torchvision in one process makes the later
    import crash (segmentation fault, seen with torch 2.14). A node may serve a
    Keras model and an Ultralytics model side by side, so the Keras backend calls
    this before it imports TensorFlow; the cost (about a second) is paid only
    where the ``[yolo]`` extra is installed.
    """
    import importlib.util
    import sys

    if "tensorflow" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def algorithm_info(manifest: Manifest) -> AlgorithmInfo:
    """Identification of a manifest's model for result objects (IHE AIR)."""
    return AlgorithmInfo(
        name=manifest.name,
        version=manifest.version,
        manufacturer=manifest.manufacturer,
        weights_sha256=manifest.sha256,
        demo=manifest.demo,
    )


def batch_size(manifest: Manifest, default: int = 8) -> int:
    """Images per backend call: ``postprocessing.batch`` of the manifest (default 8)."""
    value = manifest.postprocessing.get("batch", default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"model {manifest.name!r}: postprocessing.batch must be a positive integer, got {value!r}")
    return value


def check_images(images: Sequence[np.ndarray], uids: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``images`` are 2-D arrays, one per SOP Instance UID."""
    if len(images) != len(uids):
        raise ValueError(f"{len(images)} images but {len(uids)} SOP Instance UIDs")
    for image, uid in zip(images, uids, strict=False):
        if np.ndim(image) != 2:
            raise ValueError(
                f"image {uid}: expected a 2-D grey image (radiograph_to_unit), got shape {np.shape(image)}"
            )
