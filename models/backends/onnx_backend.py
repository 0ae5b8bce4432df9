"""ONNX Runtime backend: one inference session per model, created once and reused.

The session's execution providers are the process's (:func:`models.backends.providers.onnx_providers`):
the CPU unless the process serving a device chose others (``devices`` in ``node.yaml``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.backends.providers import onnx_providers
from models.errors import ModelError
from models.manifest import Manifest

__all__ = ["OnnxModel"]


class OnnxModel:
    """An ``onnxruntime.InferenceSession`` for one manifest, on the process's execution providers.

    Parameters
    ----------
    manifest : Manifest
        A manifest whose weights were verified (``ModelRegistry.require``).
    threads : int
        ``intra_op_num_threads``; the default 1 lets two workers share two cores
        without oversubscribing them.

    Raises
    ------
    ModelError
        If the manifest is not for the ONNX backend or the file is not a loadable
        ONNX model, or its input does not match the manifest's shape.
    """

    def __init__(self, manifest: Manifest, threads: int = 1) -> None:
        import onnxruntime as ort

        if manifest.backend != "onnx":
            raise ModelError(f"model {manifest.name!r} uses backend {manifest.backend!r}, not 'onnx'")
        if threads < 1:
            raise ModelError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = onnx_providers()
        try:
            self._session = ort.InferenceSession(str(manifest.weights_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"cannot load ONNX weights {manifest.weights_path} of {manifest.name!r}: {exc}") from exc
        #: The providers the session runs on, first preferred (ONNX Runtime may have fallen back).
        self.providers: list[str] = list(self._session.get_providers())
        self.manifest = manifest
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {manifest.name!r} has {len(inputs)} inputs; one is supported")
        self.input_name: str = inputs[0].name
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        spec = manifest.input
        expected = (
            (spec.channels, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (spec.height, spec.width, spec.channels)
        )
        declared = tuple(inputs[0].shape[1:])
        if len(declared) != 3 or any(isinstance(d, int) and d != e for d, e in zip(declared, expected, strict=False)):
            raise ModelError(
                f"model {manifest.name!r}: graph input {self.input_name!r} has shape {inputs[0].shape}, "
                f"manifest says (N, {', '.join(map(str, expected))}) {spec.layout}"
            )
        self._dtype = np.dtype(spec.dtype)
        # An export with a fixed batch size (Ultralytics' default ``dynamic=False`` gives 1)
        # is run in chunks of that size; a free batch axis is a string or None.
        batch_axis = inputs[0].shape[0]
        self.fixed_batch: int | None = batch_axis if isinstance(batch_axis, int) and batch_axis > 0 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch laid out as the manifest says; return its first output.

        Raises
        ------
        ValueError
            If the batch does not have the manifest's per-item shape.
        """
        spec = self.manifest.input
        item = (
            (spec.channels, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (spec.height, spec.width, spec.channels)
        )
        if batch.ndim != 4 or tuple(batch.shape[1:]) != item:
            raise ValueError(f"batch of shape {batch.shape} does not match (N, {', '.join(map(str, item))})")
        batch = batch.astype(self._dtype, copy=False)
        size = self.fixed_batch
        if size is None or len(batch) == size:
            return self._run_one(batch)
        chunks = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            if len(chunk) < size:  # pad the last chunk to the graph's batch size, then drop the padding
                padding = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunks.append(self._run_one(np.concatenate([chunk, padding]))[: len(chunk)])
            else:
                chunks.append(self._run_one(chunk))
        return np.concatenate(chunks)

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        outputs: list[Any] = self._session.run([self.output_names[0]], {self.input_name: batch})
        return np.asarray(outputs[0])
