"""Training entry points (need the ``[train]`` extra: TensorFlow, Keras, tf2onnx).

Each trainer is a module with ``main(argv: list[str] | None = None) -> int`` so the
node's CLI can call it (``ainode train view-filter --data DIR``). TensorFlow is
imported inside functions: importing this package costs nothing.
"""
