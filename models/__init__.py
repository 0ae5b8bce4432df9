"""The node's AI models for serving: manifests and registry, preprocessing, backends, models.

- :mod:`models.manifest`, :mod:`models.registry` — what models exist, their weights
  and SHA-256 checks (``ModelRegistry.discover(models_dir, config_file)``);
- :mod:`models.preprocess.radiograph` — CR/DX pixels → 0..1 float image, bone white;
- :mod:`models.backends.onnx_backend` — ONNX Runtime CPU sessions;
- :mod:`models.view_filter` — seed 5's frontal/lateral filter;
- :mod:`models.errors` — ``ModelError``, ``WeightsMissing``, ``ChecksumMismatch``,
  ``PreprocessError``.

Training, evaluation and the phantom generators live in the top-level package
:mod:`training` (``[train]`` extra); nothing here imports it.

Nothing is imported here, so importing one submodule does not load ONNX Runtime or
TensorFlow.
"""
