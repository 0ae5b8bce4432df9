"""Training entry points (need the ``[train]`` extra: TensorFlow, Keras, tf2onnx).

Each trainer is a module with ``main(argv: list[str] | None = None) -> int`` so the
training CLI (:mod:`training.cli`, the ``ainode-train`` command) can call it
(``ainode-train view-filter --data DIR``); the node's own command imports no training
code. TensorFlow is imported inside functions: importing this package costs nothing.
"""
