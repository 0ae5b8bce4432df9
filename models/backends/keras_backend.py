"""Keras backend: a site's native ``.keras`` / ``.h5`` model, run with Keras 3 on the CPU.

Needs the ``[train]`` extra (TensorFlow, Keras 3). The file is opened with
``keras.saving.load_model(path, compile=False)``: no optimizer or loss is needed to
predict, and a model saved with a custom loss still loads. The model is called in
inference mode (dropout off, batch norm with its moving statistics), which is what
its ONNX export (``training.architectures.export_onnx``) computes too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.backends import check_batch, import_torch_first, item_shape
from models.errors import ModelError
from models.manifest import Manifest

__all__ = ["KerasModel"]

_SUFFIXES = (".keras", ".h5", ".hdf5")


def _limit_threads(tf: Any, threads: int) -> None:
    """Ask TensorFlow for ``threads`` intra-op threads (only possible before its runtime starts)."""
    try:
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        if tf.config.threading.get_inter_op_parallelism_threads() != 1:
            tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # The runtime is already initialised (another model or a training run in this
        # process): the first setting stays; results are the same, only speed differs.
        pass


class KerasModel:
    """A Keras 3 model loaded from ``manifest.weights_path``.

    Parameters
    ----------
    manifest : Manifest
        A manifest with ``backend: keras`` whose weights were verified.
    threads : int
        TensorFlow intra-op threads; honoured when this is the first use of
        TensorFlow in the process.

    Raises
    ------
    ModelError
        Keras/TensorFlow are not installed (the ``[train]`` extra), the file is not
        a loadable Keras model, it has more than one input, or its input shape
        disagrees with the manifest.
    """

    def __init__(self, manifest: Manifest, threads: int = 1) -> None:
        if manifest.backend != "keras":
            raise ModelError(f"model {manifest.name!r} uses backend {manifest.backend!r}, not 'keras'")
        path = manifest.weights_path
        if path.suffix.lower() not in _SUFFIXES:
            raise ModelError(
                f"model {manifest.name!r}: Keras weights must be a {'/'.join(_SUFFIXES)} file, got {path.name!r}"
            )
        import_torch_first()
        try:
            import keras
            import tensorflow as tf
        except ImportError as exc:
            raise ModelError(
                f"model {manifest.name!r} needs Keras 3 and TensorFlow: install the [train] extra "
                f"(pip install 'ainode[train]') ({exc})"
            ) from exc
        _limit_threads(tf, threads)
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # Keras raises ValueError, OSError, h5py and zipfile errors
            raise ModelError(f"cannot load Keras weights {path} of {manifest.name!r}: {exc}") from exc
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1:
            raise ModelError(f"model {manifest.name!r} has {len(inputs)} inputs; one is supported")
        declared = tuple(inputs[0].shape[1:])
        expected = item_shape(manifest)
        if len(declared) != 3 or any(d is not None and int(d) != e for d, e in zip(declared, expected, strict=False)):
            raise ModelError(
                f"model {manifest.name!r}: Keras input has shape {tuple(inputs[0].shape)}, manifest says "
                f"(N, {', '.join(map(str, expected))}) {manifest.input.layout}"
            )
        self.manifest = manifest
        self._model = model
        self._dtype = np.dtype(manifest.input.dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch laid out as the manifest says; return its first output.

        Raises
        ------
        ValueError
            If the batch does not have the manifest's per-item shape.
        """
        check_batch(self.manifest, batch)
        outputs = self._model(batch.astype(self._dtype, copy=False), training=False)
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        elif isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        return np.asarray(outputs.numpy() if hasattr(outputs, "numpy") else outputs)
