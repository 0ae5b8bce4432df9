"""Training entry points (need the ``[train]`` extra: TensorFlow, Keras, tf2onnx).

Each trainer is a module with ``main(argv: list[str] | None = None) -> int`` so the
training CLI (:mod:`training.cli`, the ``ainode-train`` command) can call it
(``ainode-train view-filter --data DIR``); the node's own command imports no training
code. TensorFlow is imported inside functions: importing this package costs nothing.

Each trainer reproduces the published design of its model, its *source design* (the
names of :mod:`models`; the figures quoted from them are their authors', not measured
here): **the RSNA-PE Xception design** (:mod:`training.pe`), **the emergency-department
triage service** (:mod:`training.finding_classifier`, :mod:`training.detector`), **the
lumbar-level design** (:mod:`training.lumbar`), **the four-class design**
(:mod:`training.four_class`) and **the MIMIC-CXR view-filter design**
(:mod:`training.view_filter`). Elsewhere a *seed* is a random generator's seed: of a
phantom (``training.phantoms``) or of a training run (``--seed``).
"""
