"""What makes two analyses the same: the series' content and the pipeline's models and settings.

A PACS or Orthanc sends a study again for many reasons: its stable events fire
again when the node's own results arrive, a forwarding rule re-sends the whole
study after each new object, an operator presses "send" twice. Each time the
instances are the same (same SOP Instance UIDs, same bytes). Each instance's
SHA-256 is recorded: by the assembler for new instances when their series is
stable (off the acknowledgement path, where it cost 8 % of the receive rate),
by the receiver for an instance received again. The assembler compares

* the series **fingerprint**: SHA-256 over the sorted ``(SOP Instance UID, digest)``
  pairs of every instance of the series, and
* the pipeline's **analysis key**: SHA-256 over the pipeline's name, the whole
  manifest of every model it runs (version, weights checksum, labels, thresholds),
  and its own settings,

with those of the series' latest job. Both equal (and that job not failed): the
re-send is recorded (audit ``resent``, metric ``ainode_series_resent_total``),
nothing is analysed and nothing is sent. A new or changed instance changes the
fingerprint and the series is analysed again; new weights or settings change the
key, and the series is analysed again on its next re-send only when
``reanalyse_on_change`` is set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from models.registry import ModelRegistry
from node.pipelines import pipeline_models
from node.settings import Settings

__all__ = ["analysis_key", "analysis_keys", "series_fingerprint"]


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a spool file: the data set as received (the receiver writes the bytes as they came)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def series_fingerprint(instances: Iterable[tuple[str, str | None]]) -> str:
    """SHA-256 (hex) over the sorted ``(SOP Instance UID, content digest)`` pairs of a series.

    An instance without a digest (recorded by a version before digests) makes the
    fingerprint unique, so such a series is analysed again once.
    """
    h = hashlib.sha256()
    for sop_uid, content in sorted(instances):
        h.update(f"{sop_uid}={content or 'unknown:' + sop_uid}\n".encode())
    return h.hexdigest()


def _pipeline_settings(pipeline: str, settings: Settings) -> dict[str, Any]:
    if pipeline == "cxr":
        return settings.cxr.model_dump(mode="json")
    return {}


def analysis_key(pipeline: str, models: Mapping[str, Any], pipeline_settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a pipeline, its models (name → manifest as JSON, or ``None`` when absent) and settings."""
    text = json.dumps(
        {"pipeline": pipeline, "models": dict(models), "settings": pipeline_settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def analysis_keys(settings: Settings, registry: ModelRegistry, pipelines: Iterable[str]) -> dict[str, str]:
    """The analysis key of each pipeline as this node is configured (models not installed count as absent)."""
    installed = {m.name: m for m in registry.manifests()}
    keys: dict[str, str] = {}
    for pipeline in pipelines:
        models = {}
        for name in pipeline_models(settings, pipeline):
            manifest = installed.get(name)
            models[name] = manifest.model_dump(mode="json") if manifest is not None else None
        keys[pipeline] = analysis_key(pipeline, models, _pipeline_settings(pipeline, settings))
    return keys
