"""The model registry: which models the node has, and whether their weights are intact.

Discovery (:meth:`ModelRegistry.discover`):

* with a configuration file (``config/models.yaml``), the registry holds exactly the
  models listed under ``models:``; an entry is either a reference to a manifest file,
  ``{manifest: cxr-view-filter/model.json}`` (relative to the models directory), or an
  inline manifest whose relative ``weights`` path resolves against the models directory;
* without one, every ``<models dir>/*/model.json``.

A manifest that cannot be read or validated does not stop discovery: it is kept as an
*invalid* entry, reported by :meth:`ModelRegistry.verify` and raised as
:class:`~models.errors.ModelError` by :meth:`ModelRegistry.require`, so that one broken
model disables one pipeline and the node reports why at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.errors import ChecksumMismatch, ModelError, WeightsMissing
from models.manifest import Manifest, load_manifest, manifest_from_mapping, sha256_file

__all__ = ["ModelRegistry", "ModelStatus", "ModelState"]

ModelState = Literal["ok", "missing", "mismatch", "invalid"]


@dataclass(frozen=True)
class ModelStatus:
    """Result of checking one model's manifest and weights."""

    name: str
    state: ModelState
    message: str


@dataclass(frozen=True)
class _Invalid:
    name: str
    message: str


@dataclass(frozen=True)
class _Absent:
    """A listed manifest file that does not exist: the model is not installed (its pipeline is disabled)."""

    name: str
    message: str


class ModelRegistry:
    """Manifests by model name, with weights verification (see the module docstring)."""

    def __init__(self, entries: dict[str, Manifest | _Invalid | _Absent]) -> None:
        self._entries = dict(entries)
        self._verified: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha256)

    @classmethod
    def discover(cls, models_dir: Path, config_file: Path | None = None) -> ModelRegistry:
        """Find the models' manifests.

        Parameters
        ----------
        models_dir : Path
            Folder holding ``<name>/model.json`` and the weights.
        config_file : Path, optional
            A ``models.yaml`` listing the models to use (see the module docstring).

        Raises
        ------
        ModelError
            If ``config_file`` cannot be read or is not a mapping with a ``models`` list.
        """
        models_dir = Path(models_dir)
        found: list[Manifest | _Invalid | _Absent] = []
        if config_file is not None:
            for index, item in enumerate(_read_config(Path(config_file))):
                found.append(_load_entry(item, index, models_dir, Path(config_file)))
        elif models_dir.is_dir():
            for path in sorted(models_dir.glob("*/model.json")):
                found.append(_guarded(lambda p=path: load_manifest(p), path.parent.name))
        entries: dict[str, Manifest | _Invalid | _Absent] = {}
        for entry in found:
            if entry.name in entries:
                first = entries[entry.name]
                where = first.source if isinstance(first, Manifest) else "an earlier entry"
                other = entry.source if isinstance(entry, Manifest) else "another entry"
                entries[entry.name] = _Invalid(
                    entry.name, f"model {entry.name!r} is defined twice: {where} and {other}"
                )
            else:
                entries[entry.name] = entry
        return cls(entries)

    def names(self) -> list[str]:
        """Names of all entries, valid or not, sorted."""
        return sorted(self._entries)

    def manifests(self) -> list[Manifest]:
        """The valid manifests, sorted by name (weights not checked)."""
        return [e for _, e in sorted(self._entries.items()) if isinstance(e, Manifest)]

    def get(self, name: str) -> Manifest:
        """The manifest of ``name`` (weights not checked).

        Raises
        ------
        ModelError
            If there is no such model or its manifest is invalid.
        """
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise ModelError(f"no model named {name!r} (known models: {known})")
        if isinstance(entry, _Invalid):
            raise ModelError(entry.message)
        if isinstance(entry, _Absent):
            raise WeightsMissing(entry.message)
        return entry

    def require(self, name: str) -> Manifest:
        """The manifest of ``name`` once its weights file exists and matches its SHA-256.

        Raises
        ------
        WeightsMissing
            The weights file is absent; the message names it and how to provide it.
        ChecksumMismatch
            The file's SHA-256 differs from the manifest's (expected vs actual).
        ModelError
            Unknown model, invalid manifest, or unreadable weights.
        """
        manifest = self.get(name)
        path = manifest.weights_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise WeightsMissing(_missing_message(manifest)) from None
        except OSError as exc:
            raise ModelError(f"cannot read weights {path} of model {name!r}: {exc.strerror or exc}") from exc
        if not path.is_file():
            raise WeightsMissing(_missing_message(manifest))
        cached = self._verified.get(name)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return manifest
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ModelError(f"cannot read weights {path} of model {name!r}: {exc.strerror or exc}") from exc
        if actual != manifest.sha256:
            raise ChecksumMismatch(
                f"weights {path} of model {name!r} changed: manifest {manifest.source} expects "
                f"SHA-256 {manifest.sha256}, the file has {actual}; restore the file or "
                f"update the manifest's sha256 if the new weights are intended"
            )
        self._verified[name] = (stat.st_size, stat.st_mtime_ns, actual)
        return manifest

    def verify(self) -> list[ModelStatus]:
        """Check every model; one :class:`ModelStatus` per entry, sorted by name."""
        statuses = []
        for name in self.names():
            try:
                manifest = self.require(name)
            except WeightsMissing as exc:
                statuses.append(ModelStatus(name, "missing", str(exc)))
            except ChecksumMismatch as exc:
                statuses.append(ModelStatus(name, "mismatch", str(exc)))
            except ModelError as exc:
                statuses.append(ModelStatus(name, "invalid", str(exc)))
            else:
                statuses.append(ModelStatus(name, "ok", f"{manifest.name} {manifest.version}: {manifest.weights_path}"))
        return statuses


def _missing_message(manifest: Manifest) -> str:
    how = f"build it with `{manifest.train_command}`, or " if manifest.train_command else ""
    return (
        f"weights file {manifest.weights_path} of model {manifest.name!r} is missing "
        f"(manifest {manifest.source}); {how}copy the trained file to {manifest.weights_path}"
    )


def _guarded(load: Any, fallback_name: str) -> Manifest | _Invalid:
    try:
        manifest: Manifest = load()
        return manifest
    except ModelError as exc:
        return _Invalid(fallback_name, str(exc))


def _read_config(config_file: Path) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model list {config_file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"model list {config_file} is not valid YAML: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
        raise ModelError(f"model list {config_file}: expected a mapping with a 'models:' list")
    return list(data.get("models") or [])


def _load_entry(item: Any, index: int, models_dir: Path, config_file: Path) -> Manifest | _Invalid | _Absent:
    if isinstance(item, dict) and set(item) == {"manifest"}:
        ref = Path(str(item["manifest"]))
        path = ref if ref.is_absolute() else models_dir / ref
        if not path.exists():
            # Not installed (a fresh checkout before `ainode-train build-demo`, or weights not yet copied):
            # like absent weights, this disables what needs the model instead of stopping the node.
            name = ref.parent.name or f"models[{index}]"
            return _Absent(
                name,
                f"model {name!r} is not installed: its manifest {path} does not exist "
                f"(listed in {config_file}); build the demo weights with `ainode-train build-demo`, "
                f"or copy the model's folder (model.json and weights) to {path.parent}",
            )
        return _guarded(lambda: load_manifest(path), ref.parent.name or f"models[{index}]")
    named = isinstance(item, dict) and isinstance(item.get("name"), str)
    fallback = item["name"] if named else f"models[{index}]"
    return _guarded(lambda: manifest_from_mapping(item, models_dir, f"{config_file} models[{index}]"), fallback)
