"""Ultralytics backend: a site's native YOLO ``.pt`` detector, run with torch on the CPU.

Needs the ``[yolo]`` extra (torch, torchvision, ultralytics). The checkpoint is opened
with ``ultralytics.YOLO(path, task="detect")``; its ``torch.nn.Module`` is fused
(convolution + batch norm, as Ultralytics' own predictor and exporter do) and called
in eval mode. Its first output is Ultralytics' raw prediction ``(N, 4 + nc, anchors)``:
per anchor a box as centre x, centre y, width, height in the input's pixels, then the
class scores after the sigmoid — exactly what ``model.export(format="onnx")`` writes,
so :mod:`models.detector` decodes both backends with one function.

Weights are never downloaded at run time (the node runs only the file whose SHA-256 its
manifest names): Ultralytics is put in offline mode (``YOLO_OFFLINE``) and may not install
packages (``YOLO_AUTOINSTALL``) unless the environment already says otherwise, and only an
existing ``.pt`` file is opened — a bare name such as ``yolov8n.pt`` would otherwise be
fetched.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from models.backends import check_batch, item_shape
from models.errors import ModelError
from models.manifest import Manifest

__all__ = ["UltralyticsModel"]


def _import_yolo(name: str) -> tuple[Any, Any]:
    """``torch`` and ``ultralytics.YOLO``, or a ModelError saying which extra is missing."""
    if "tensorflow" in sys.modules and "torchvision" not in sys.modules:
        # Importing torchvision after TensorFlow crashes the process (TF 2.21, torch 2.14).
        raise ModelError(
            f"model {name!r}: TensorFlow was imported before torch in this process, and importing "
            "Ultralytics now would crash it; load Ultralytics models before Keras ones (or import torch first)"
        )
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    try:
        import torch
        import torchvision  # noqa: F401  (imported here so that TensorFlow cannot come first)
        from ultralytics import YOLO
    except ImportError as exc:
        raise ModelError(
            f"model {name!r} needs Ultralytics and torch: install the [yolo] extra (pip install 'ainode[yolo]') ({exc})"
        ) from exc
    return torch, YOLO


class UltralyticsModel:
    """An Ultralytics YOLO detection model loaded from ``manifest.weights_path``.

    Parameters
    ----------
    manifest : Manifest
        A manifest with ``backend: ultralytics``, ``input.layout: NCHW`` and 3 channels,
        whose weights were verified.
    threads : int
        ``torch.set_num_threads`` (a process-wide setting of torch).

    Raises
    ------
    ModelError
        The ``[yolo]`` extra is not installed, the file is not a loadable Ultralytics
        detection checkpoint, or the manifest's input does not fit it (layout,
        channels, a size that is not a multiple of the model's stride).
    """

    def __init__(self, manifest: Manifest, threads: int = 1) -> None:
        if manifest.backend != "ultralytics":
            raise ModelError(f"model {manifest.name!r} uses backend {manifest.backend!r}, not 'ultralytics'")
        path = manifest.weights_path
        if path.suffix.lower() != ".pt" or not path.is_file():
            raise ModelError(f"model {manifest.name!r}: Ultralytics weights must be an existing .pt file, got {path}")
        torch, yolo_class = _import_yolo(manifest.name)
        torch.set_num_threads(threads)
        try:
            yolo = yolo_class(str(path), task="detect")
            module = yolo.model
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"the checkpoint holds {type(module).__name__}, not a torch module")
            module = module.float().eval()
            if hasattr(module, "fuse"):
                module = module.fuse(verbose=False) or module
        except ModelError:
            raise
        except Exception as exc:  # torch.load, pickle and Ultralytics raise many types
            raise ModelError(f"cannot load Ultralytics weights {path} of {manifest.name!r}: {exc}") from exc
        spec = manifest.input
        channels = int(getattr(module, "yaml", {}).get("ch", 3))
        if spec.layout != "NCHW" or spec.channels != channels:
            raise ModelError(
                f"model {manifest.name!r}: an Ultralytics model takes (N, {channels}, H, W) NCHW input, "
                f"manifest says {item_shape(manifest)} {spec.layout}"
            )
        stride = int(max(getattr(module, "stride", torch.tensor([32])).tolist()))
        if spec.height % stride or spec.width % stride:
            raise ModelError(
                f"model {manifest.name!r}: input {spec.height}×{spec.width} is not a multiple of "
                f"the model's stride {stride}"
            )
        self.manifest = manifest
        self.names: dict[int, str] = dict(getattr(module, "names", {}) or {})
        self._torch = torch
        self._module = module

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an NCHW float batch (RGB, 0..1); return the raw ``(N, 4 + nc, anchors)`` output.

        Raises
        ------
        ValueError
            If the batch does not have the manifest's per-item shape.
        """
        check_batch(self.manifest, batch)
        tensor = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with self._torch.inference_mode():
            output = self._module(tensor)
        if isinstance(output, (list, tuple)):  # eval mode: (predictions, raw head outputs)
            output = output[0]
        return np.asarray(output.detach().cpu().numpy())
