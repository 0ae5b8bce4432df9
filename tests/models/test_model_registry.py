"""Model manifests and the registry: ok / missing / mismatch / invalid, with useful messages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from models.errors import ChecksumMismatch, ModelError, WeightsMissing
from models.manifest import load_manifest, manifest_from_mapping
from models.registry import ModelRegistry
from tests.helpers.radiographs import repo_root

WEIGHTS = b"not really a network, but bytes with a checksum"


def manifest_dict(name: str = "toy", weights: str = "model.onnx", data: bytes = WEIGHTS) -> dict[str, Any]:
    return {
        "name": name,
        "version": "0.1.0",
        "task": "classification",
        "backend": "onnx",
        "weights": weights,
        "sha256": hashlib.sha256(data).hexdigest(),
        "labels": [{"key": "normal", "display": "Normal", "threshold": 0.5}],
        "input": {
            "height": 8,
            "width": 8,
            "channels": 1,
            "layout": "NCHW",
            "dtype": "float32",
            "preprocessing": {"kind": "radiograph"},
        },
        "manufacturer": "tests",
        "licence": "CC0",
        "card": "MODEL_CARD.md",
        "train_command": "ainode train toy --data DATA",
    }


def write_model(models_dir: Path, name: str = "toy", data: bytes | None = WEIGHTS, **changes: Any) -> Path:
    folder = models_dir / name
    folder.mkdir(parents=True)
    if data is not None:
        (folder / "model.onnx").write_bytes(data)
    (folder / "model.json").write_text(json.dumps({**manifest_dict(name), **changes}), encoding="utf-8")
    return folder


def test_ok_model_is_verified_and_paths_resolve_beside_the_manifest(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    registry = ModelRegistry.discover(tmp_path)
    assert [s.state for s in registry.verify()] == ["ok"]
    manifest = registry.require("toy")
    assert manifest.weights_path == (folder / "model.onnx").resolve()
    assert manifest.card_path == (folder / "MODEL_CARD.md").resolve()
    assert [m.name for m in registry.manifests()] == ["toy"]


def test_missing_weights_say_which_file_and_how_to_provide_it(tmp_path: Path) -> None:
    folder = write_model(tmp_path, data=None)
    registry = ModelRegistry.discover(tmp_path)
    [status] = registry.verify()
    assert status.state == "missing"
    assert str((folder / "model.onnx").resolve()) in status.message
    assert "ainode train toy --data DATA" in status.message and "copy" in status.message
    with pytest.raises(WeightsMissing) as caught:
        registry.require("toy")
    assert isinstance(caught.value, ModelError)


def test_changed_weights_are_a_mismatch_naming_both_checksums(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    registry = ModelRegistry.discover(tmp_path)
    registry.require("toy")  # verified once ...
    changed = WEIGHTS + b"!"
    (folder / "model.onnx").write_bytes(changed)  # ... then replaced: size differs, so re-hashed
    [status] = registry.verify()
    assert status.state == "mismatch"
    assert hashlib.sha256(WEIGHTS).hexdigest() in status.message
    assert hashlib.sha256(changed).hexdigest() in status.message
    with pytest.raises(ChecksumMismatch):
        registry.require("toy")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"task": "segmentation"}, "task"),
        ({"backend": "torch"}, "backend"),
        ({"sha256": "abc"}, "sha256"),
        ({"input": {"height": 0, "width": 8, "channels": 1, "layout": "NCHW"}}, "input.height"),
        ({"labels": [{"key": "x", "display": "X", "threshold": 1.5}]}, "labels.0.threshold"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_manifest_is_reported_with_its_file_and_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    folder = write_model(tmp_path, **change)
    registry = ModelRegistry.discover(tmp_path)
    [status] = registry.verify()
    assert status.state == "invalid"
    assert str(folder / "model.json") in status.message
    assert f"field '{field}'" in status.message
    with pytest.raises(ModelError, match="invalid model manifest"):
        registry.get(status.name)
    with pytest.raises(ModelError):
        load_manifest(folder / "model.json")


def test_invalid_manifest_message_names_every_field_in_pydantic_words(tmp_path: Path) -> None:
    """The whole message, as an administrator reads it: dotted field names, pydantic's text, no values."""
    data = {**manifest_dict(), "version": "", "colour": "secret-ish"}
    data["labels"] = [{"key": "normal", "display": "Normal", "threshold": 1.5}]
    with pytest.raises(ModelError) as caught:
        manifest_from_mapping(data, tmp_path, "toy/model.json")
    assert str(caught.value) == (
        "invalid model manifest toy/model.json: "
        "field 'version': String should have at least 1 character; "
        "field 'labels.0.threshold': Input should be less than or equal to 1; "
        "field 'colour': Extra inputs are not permitted"
    )


def test_manifest_that_is_not_json_does_not_stop_discovery(tmp_path: Path) -> None:
    write_model(tmp_path, name="good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json", encoding="utf-8")
    registry = ModelRegistry.discover(tmp_path)
    states = {s.name: s.state for s in registry.verify()}
    assert states == {"broken": "invalid", "good": "ok"}
    assert "not JSON" in registry.verify()[0].message


def test_models_yaml_lists_references_and_inline_manifests(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_model(models_dir, name="toy")
    write_model(models_dir, name="unlisted")
    (models_dir / "inline").mkdir()
    (models_dir / "inline" / "weights.bin").write_bytes(b"inline weights")
    inline = manifest_dict("inline-model", weights="inline/weights.bin", data=b"inline weights")
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - manifest: toy/model.json\n  - " + json.dumps(inline) + "\n", encoding="utf-8")
    registry = ModelRegistry.discover(models_dir, config)
    assert registry.names() == ["inline-model", "toy"]  # only what the file lists
    assert [s.state for s in registry.verify()] == ["ok", "ok"]
    assert registry.get("inline-model").weights_path == (models_dir / "inline" / "weights.bin").resolve()


def test_listed_manifest_that_does_not_exist_is_missing_not_invalid(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_model(models_dir, name="toy")
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - manifest: toy/model.json\n  - manifest: not-built/model.json\n", encoding="utf-8")
    registry = ModelRegistry.discover(models_dir, config)
    states = {s.name: s for s in registry.verify()}
    assert states["toy"].state == "ok"
    # Like absent weights: the pipelines needing it are disabled, the node still starts.
    assert states["not-built"].state == "missing"
    assert "ainode-train build-demo" in states["not-built"].message
    assert str(models_dir / "not-built" / "model.json") in states["not-built"].message
    with pytest.raises(WeightsMissing, match="not installed"):
        registry.require("not-built")


def test_inline_manifest_error_names_the_config_entry(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: half, version: '1'}\n", encoding="utf-8")
    [status] = ModelRegistry.discover(tmp_path, config).verify()
    assert status.name == "half" and status.state == "invalid"
    assert f"{config} models[0]" in status.message and "field 'task'" in status.message


def test_a_name_defined_twice_is_invalid(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_model(models_dir, name="toy")
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - manifest: toy/model.json\n  - "
        + json.dumps(manifest_dict("toy", weights="toy/model.onnx"))
        + "\n",
        encoding="utf-8",
    )
    [status] = ModelRegistry.discover(models_dir, config).verify()
    assert status.state == "invalid" and "defined twice" in status.message


def test_unreadable_config_and_unknown_model_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model list"):
        ModelRegistry.discover(tmp_path, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {a: 1}\n", encoding="utf-8")
    with pytest.raises(ModelError, match="'models:' list"):
        ModelRegistry.discover(tmp_path, bad)
    with pytest.raises(ModelError, match="no model named 'nope'"):
        ModelRegistry.discover(tmp_path).get("nope")


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    manifest = manifest_from_mapping(manifest_dict(), tmp_path, "test")
    again = manifest_from_mapping(json.loads(json.dumps(manifest.to_json_dict())), tmp_path, "again")
    assert again.to_json_dict() == manifest.to_json_dict() and again.source == "again"
    assert manifest.label("normal").threshold == 0.5


def test_shipped_configuration_and_weights_verify() -> None:
    root = repo_root()
    registry = ModelRegistry.discover(root / "weights", root / "config" / "models.yaml")
    states = {s.name: s.state for s in registry.verify()}
    assert {"cxr-view-filter", "cxr-findings", "cxr-four-class", "cxr-detector", "ct-lumbar"} <= set(states)
    assert set(states.values()) == {"ok"}, states
    assert all(registry.get(n).demo for n in states if n != "cxr-view-filter")
    manifest = registry.get("cxr-view-filter")
    assert manifest.card_path is not None and manifest.card_path.is_file()
    card = manifest.card_path.read_text(encoding="utf-8")
    assert "non-commercial" in card.lower() and "105,473" in card
