"""The node's AI models for serving: manifests and registry, preprocessing, backends, models.

- :mod:`models.manifest`, :mod:`models.registry` — what models exist, their weights
  and SHA-256 checks (``ModelRegistry.discover(models_dir, config_file)``);
- :mod:`models.preprocess.radiograph` — CR/DX pixels → 0..1 float image, bone white;
  :mod:`models.preprocess.ct_series` — a CT series ordered along its normal, read in HU;
- :mod:`models.backends` — ONNX Runtime CPU sessions, and a site's native Keras or
  Ultralytics weights;
- the models below;
- :mod:`models.errors` — one tree under ``ModelError``: ``WeightsMissing``,
  ``ChecksumMismatch``, ``PreprocessError`` (bad input, also a ``ValueError``) and its
  ``SeriesError``.

Each model reproduces a published design, its *source design*; the figures the
docstrings quote from those designs are their authors', not measured here:

- **the RSNA-PE Xception design** (:mod:`models.pe`): pulmonary embolism on CT
  pulmonary angiography, Xception with nine sigmoid heads trained on the RSNA Pulmonary
  Embolism Detection Challenge 2020 data;
- **the emergency-department triage service** (:mod:`models.finding_classifier`,
  :mod:`models.detector`): a web service for emergency departments that ranks a chest
  radiograph's likely findings with an EfficientNet classifier of the fourteen NIH
  ChestX-ray14 findings and draws suspicious regions with a YOLOv5 detector trained on
  ChestX-Det;
- **the lumbar-level design** (:mod:`models.lumbar`, :mod:`models.body_composition`):
  EfficientNetV2-M classifying abdominal CT slices as T, L1–L5 or S, to find the L3 slice
  where muscle is measured for sarcopenia;
- **the four-class design** (:mod:`models.four_class`): a 5-layer CNN and ResNet-18
  telling COVID-19, normal, pneumonia and tuberculosis apart on chest radiographs (the
  Kaggle "Chest X-Ray (Pneumonia, Covid-19, Tuberculosis)" set);
- **the MIMIC-CXR view-filter design** (:mod:`models.view_filter`): a small 64×64 CNN
  that tells frontal from lateral chest radiographs, written for MIMIC-CXR, whose view
  tags are unreliable.

Training, evaluation and the phantom generators live in the top-level package
:mod:`training` (``[train]`` extra); nothing here imports it.

Nothing is imported here, so importing one submodule does not load ONNX Runtime or
TensorFlow.
"""
