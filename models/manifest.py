"""Model manifests: what a model is, where its weights are and how to feed it.

A manifest is a ``model.json`` beside its weights (``<models dir>/<name>/model.json``)
or an entry of ``config/models.yaml``. It names the model, the weights file and its
SHA-256 (a changed or missing file is refused at start-up), the output labels with
their decision thresholds, and the input geometry and preprocessing. Example::

    {
      "name": "cxr-view-filter", "version": "1.0.0", "task": "view-filter",
      "backend": "onnx", "weights": "model.onnx", "sha256": "3f1c...",
      "labels": [{"key": "lateral", "display": "Lateral view", "threshold": 0.5}],
      "input": {"height": 64, "width": 64, "channels": 1, "layout": "NHWC",
                "dtype": "float32", "preprocessing": {"kind": "radiograph"}},
      "manufacturer": "ainode", "demo": false, "description": "...",
      "licence": "...", "card": "MODEL_CARD.md"
    }

Relative paths (``weights``, ``card``) resolve against the manifest's folder; for an
inline ``models.yaml`` entry, against the models directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from core.validation import problems
from models.errors import ModelError

__all__ = [
    "Task",
    "Backend",
    "LabelSpec",
    "InputSpec",
    "Manifest",
    "load_manifest",
    "manifest_from_mapping",
    "sha256_file",
]

Task = Literal[
    "view-filter",
    "multilabel-classification",
    "classification",
    "detection",
    "slice-classification",
]
Backend = Literal["onnx", "keras", "ultralytics"]


class LabelSpec(BaseModel):
    """One output of a model: a key into ``sr_writer.codes``, a display text, a threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    display: str = Field(min_length=1)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class InputSpec(BaseModel):
    """Geometry, layout and preprocessing of the tensor a model takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0, le=8192)
    width: int = Field(gt=0, le=8192)
    channels: int = Field(gt=0, le=16)
    layout: Literal["NCHW", "NHWC"]
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    preprocessing: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Description of one model (see the module docstring for an example).

    ``postprocessing`` holds model-specific decision parameters (for the view
    filter, ``disagreement_probability``); ``train_command`` tells an
    administrator how to build missing weights.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    task: Task
    backend: Backend
    weights: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    labels: list[LabelSpec] = Field(min_length=1)
    input: InputSpec
    manufacturer: str = "ainode"
    demo: bool = False
    description: str = ""
    licence: str = ""
    card: str | None = None
    postprocessing: dict[str, Any] = Field(default_factory=dict)
    train_command: str | None = None

    _base_dir: Path = PrivateAttr(default=Path("."))
    _source: str = PrivateAttr(default="<memory>")

    @property
    def base_dir(self) -> Path:
        """Folder that relative ``weights`` and ``card`` paths resolve against."""
        return self._base_dir

    @property
    def source(self) -> str:
        """Where the manifest was read from (a file, or ``models.yaml`` entry)."""
        return self._source

    @property
    def weights_path(self) -> Path:
        """Absolute path of the weights file."""
        return (self._base_dir / self.weights).resolve()

    @property
    def card_path(self) -> Path | None:
        """Absolute path of the model card, when the manifest names one."""
        return (self._base_dir / self.card).resolve() if self.card else None

    def label(self, key: str) -> LabelSpec:
        """Return the label whose key is ``key`` (``KeyError`` if none)."""
        for spec in self.labels:
            if spec.key == key:
                return spec
        raise KeyError(f"model {self.name!r} has no label {key!r}")

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as written to ``model.json`` (no private attributes)."""
        return self.model_dump(mode="json", exclude_none=True)


def _format_validation_error(source: str, exc: ValidationError) -> str:
    """One line naming ``source`` and each invalid field with pydantic's message.

    The message is pydantic's own: a validator's error keeps its ``"Value error, "`` prefix,
    which :func:`core.validation.problems` takes off for the other configuration files.
    """
    parts = []
    for problem in problems(exc):
        message = f"Value error, {problem.message}" if problem.type == "value_error" else problem.message
        parts.append(f"field '{problem.key or '<root>'}': {message}")
    return f"invalid model manifest {source}: " + "; ".join(parts)


def manifest_from_mapping(data: Any, base_dir: Path, source: str) -> Manifest:
    """Validate a mapping as a :class:`Manifest`.

    Parameters
    ----------
    data : Any
        The decoded JSON/YAML object.
    base_dir : Path
        Folder that relative paths in the manifest resolve against.
    source : str
        Where ``data`` came from, used in error messages.

    Raises
    ------
    ModelError
        Naming ``source`` and each invalid field.
    """
    if not isinstance(data, dict):
        raise ModelError(f"invalid model manifest {source}: expected a mapping, got {type(data).__name__}")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ModelError(_format_validation_error(source, exc)) from exc
    manifest._base_dir = Path(base_dir)
    manifest._source = source
    return manifest


def load_manifest(path: Path) -> Manifest:
    """Read and validate a ``model.json`` file.

    Raises
    ------
    ModelError
        If the file cannot be read, is not JSON, or a field is invalid.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"invalid model manifest {path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    return manifest_from_mapping(data, path.parent, str(path))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weights need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
