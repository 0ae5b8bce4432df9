"""Keras builders of the chest radiograph classifiers and their ONNX export.

The classifiers of the emergency-department triage service and the four-class design:

- :func:`finding_classifier` (the emergency-department triage service): an EfficientNet backbone (B0 by default; B0..B7
  or V2 B0..B3/S/M/L), global average pooling, dropout and Dense(14, sigmoid) for the
  NIH ChestX-ray14 labels; 512×512 input by default.
- :func:`four_class_resnet18` (the four-class design): ResNet-18 (He et al. 2016: 7×7/2 stem, 3×3/2
  max-pooling, 4 stages × 2 basic blocks with 64/128/256/512 filters, global average
  pooling) with a softmax over 4 classes; 256×256 input as in the four-class design.
- :func:`four_class_cnn` (the four-class design): the "5-layer CNN": 3 blocks of Conv2D 3×3 + ReLU +
  2×2 max-pooling and 2 fully connected layers, softmax over 4 classes.

All take grey images (one channel, NHWC) scaled to 0..1, bone white — the output of
:func:`models.preprocess.radiograph.radiograph_input`. ImageNet weights are never
downloaded (``weights=None``): the models are trained from scratch by the training
commands. EfficientNet V1 in Keras always starts with ``Rescaling(1/255)`` and a
``Normalization`` layer (and V2 with ``include_preprocessing=True``); they would
expect 0..255 input, and the never-adapted ``Normalization`` leaves its mean and
variance as two extra graph inputs after ``tf2onnx.convert.from_function`` (seen
with Keras 3.15 / tf2onnx 1.17), so they are replaced by identity layers (V1) or switched off (V2): the model then
sees exactly the 0..1 image, and the exported ONNX graph has one input.

TensorFlow/Keras (the ``[train]`` extra) are imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "EFFICIENTNET_VARIANTS",
    "FOUR_CLASSES",
    "export_onnx",
    "finding_classifier",
    "four_class_cnn",
    "four_class_resnet18",
]

EFFICIENTNET_VARIANTS = (
    "B0",
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "V2B0",
    "V2B1",
    "V2B2",
    "V2B3",
    "V2S",
    "V2M",
    "V2L",
)
"""Backbone variants accepted by :func:`finding_classifier`."""

FOUR_CLASSES = ("covid19", "normal", "pneumonia", "tuberculosis")
"""The four-class design's classes in output order (alphabetical, as its class folders sort)."""

_PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


def _efficientnet_constructor(variant: str) -> tuple[Any, bool]:
    """The ``keras.applications`` function of ``variant`` and whether it is a V2 model."""
    import keras

    key = variant.strip().upper().replace("-", "")
    if key not in EFFICIENTNET_VARIANTS:
        raise ValueError(f"EfficientNet variant must be one of {', '.join(EFFICIENTNET_VARIANTS)}; got {variant!r}")
    if key.startswith("V2"):
        return getattr(keras.applications, f"EfficientNetV2{key[2:]}"), True
    return getattr(keras.applications, f"EfficientNet{key}"), False


def _without_preprocessing(base: Any) -> Any:
    """A clone of an EfficientNet V1 backbone whose Rescaling/Normalization layers are identities."""
    import keras

    def clone(layer: Any) -> Any:
        if type(layer).__name__ in _PREPROCESSING_LAYERS:
            return keras.layers.Identity(name=f"{layer.name}_removed")
        return layer.__class__.from_config(layer.get_config())

    stripped = keras.models.clone_model(base, clone_function=clone)
    left = [layer.name for layer in stripped.layers if type(layer).__name__ in _PREPROCESSING_LAYERS]
    if left:
        raise AssertionError(f"preprocessing layers left in the backbone: {left}")
    return stripped


def finding_classifier(
    variant: str = "B0", input_size: int = 512, labels: int = 14, *, channels: int = 1, dropout: float = 0.3
) -> Any:
    """The triage service's finding classifier: EfficientNet backbone → GAP → dropout → Dense(sigmoid).

    Parameters
    ----------
    variant : str
        ``"B0"``..``"B7"`` (EfficientNet) or ``"V2B0"``..``"V2B3"``, ``"V2S"``,
        ``"V2M"``, ``"V2L"`` (EfficientNetV2).
    input_size : int
        Height and width of the square input (the emergency-department triage service's default here: 512).
    labels : int
        Number of sigmoid outputs (14 NIH ChestX-ray14 labels).
    channels : int
        Input channels (1 = grey radiograph).
    dropout : float
        Dropout rate before the output layer.

    Returns
    -------
    keras.Model
        Input ``image`` (N, input_size, input_size, channels) in 0..1; output
        ``findings`` (N, labels), independent probabilities.
    """
    import keras
    from keras import layers

    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 (five stride-2 stages), got {input_size}")
    if labels < 1:
        raise ValueError(f"labels must be at least 1, got {labels}")
    constructor, is_v2 = _efficientnet_constructor(variant)
    shape = (input_size, input_size, channels)
    if is_v2:
        base = constructor(include_top=False, weights=None, input_shape=shape, include_preprocessing=False)
    else:
        base = _without_preprocessing(constructor(include_top=False, weights=None, input_shape=shape))
    image = keras.Input(shape=shape, name="image")
    x = base(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(labels, activation="sigmoid", name="findings")(x)
    return keras.Model(image, out, name=f"finding_classifier_{variant.upper()}")


def _basic_block(x: Any, filters: int, stride: int, name: str) -> Any:
    """ResNet basic block: two 3×3 convolutions with batch norm, identity or 1×1 projection shortcut."""
    from keras import layers

    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def four_class_resnet18(input_size: int = 256, *, channels: int = 1, classes: int = len(FOUR_CLASSES)) -> Any:
    """The four-class design's ResNet-18 with a softmax over covid19, normal, pneumonia, tuberculosis.

    Parameters
    ----------
    input_size : int
        Height and width of the square input (the four-class design: 256).
    channels : int
        Input channels (1 = grey radiograph).
    classes : int
        Softmax outputs (4, in the order of :data:`FOUR_CLASSES`).

    Returns
    -------
    keras.Model
        Input ``image`` (N, input_size, input_size, channels) in 0..1, output
        ``classes`` (N, classes) summing to 1.
    """
    import keras
    from keras import layers

    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 (total stride 32), got {input_size}")
    image = keras.Input(shape=(input_size, input_size, channels), name="image")
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(image)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in (1, 2):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, stride, name=f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="classes")(x)
    return keras.Model(image, out, name="four_class_resnet18")


def four_class_cnn(
    input_size: int = 256,
    *,
    channels: int = 1,
    filters: tuple[int, int, int] = (16, 32, 64),
    hidden: int = 128,
    dropout: float = 0.5,
    classes: int = len(FOUR_CLASSES),
) -> Any:
    """The four-class design's 5-layer CNN: 3 × (Conv2D 3×3 + ReLU + 2×2 max-pooling), Dense ReLU, Dense softmax.

    The four-class design gives the layer structure, not the widths; the defaults (16/32/64
    filters with same padding, 128 hidden units, dropout before the output) are ours.

    Parameters
    ----------
    input_size : int
        Height and width of the square input (the four-class design: 256), a multiple of 8.
    channels : int
        Input channels (1 = grey radiograph).
    filters : tuple of int
        Filters of the three convolution blocks.
    hidden : int
        Units of the first fully connected layer.
    dropout : float
        Dropout rate before the output layer.
    classes : int
        Softmax outputs (4, in the order of :data:`FOUR_CLASSES`).

    Returns
    -------
    keras.Model
        Input ``image`` (N, input_size, input_size, channels) in 0..1, output
        ``classes`` (N, classes) summing to 1.
    """
    import keras
    from keras import layers

    if input_size < 8 or input_size % 8:
        raise ValueError(f"input_size must be a positive multiple of 8 (three 2×2 poolings), got {input_size}")
    model_layers: list[Any] = [keras.Input(shape=(input_size, input_size, channels), name="image")]
    for i, width in enumerate(filters, start=1):
        model_layers += [
            layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i}"),
            layers.MaxPooling2D(2, name=f"pool{i}"),
        ]
    model_layers += [
        layers.Flatten(name="flatten"),
        layers.Dense(hidden, activation="relu", name="fc1"),
        layers.Dropout(dropout, name="dropout"),
        layers.Dense(classes, activation="softmax", name="classes"),
    ]
    return keras.Sequential(model_layers, name="four_class_cnn")


def export_onnx(
    model: Any, path: str | Path, *, input_name: str = "image", output_name: str = "scores", opset: int = 17
) -> None:
    """Export a single-input Keras image model to ONNX (NHWC float32, batch dimension free).

    The model is traced in inference mode (dropout off, batch norm with its moving
    statistics) and its variables are frozen into the graph, so the ONNX model has
    exactly one input, ``input_name``, and one output, ``output_name``.

    Parameters
    ----------
    model : keras.Model
        A model with one input of shape (None, height, width, channels).
    path : str or Path
        Where to write the ``.onnx`` file.
    input_name, output_name : str
        Names of the graph's input and output.
    opset : int
        ONNX opset version.
    """
    import tensorflow as tf
    import tf2onnx

    inputs = model.inputs
    if len(inputs) != 1:
        raise ValueError(f"export_onnx takes a model with one input, {model.name!r} has {len(inputs)}")
    shape = (None, *tuple(inputs[0].shape)[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name=input_name),)

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def serve(image: Any) -> Any:
        return {output_name: model(image, training=False)}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset, output_path=str(path))
