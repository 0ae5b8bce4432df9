"""The pipelines the node can build, by name: one builder each, no names resolved at run time.

A builder makes its pipeline from the verified models and the node's settings (models loaded now, once
per worker). Each imports its pipeline's module when called, so that the writers (highdicom) and a
pipeline's models are imported only when that pipeline is enabled. The names are those of
:data:`node.pipelines.PIPELINE_MODELS` and of the routing rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from node.errors import ConfigError

if TYPE_CHECKING:
    from models.registry import ModelRegistry
    from node.pipelines import Pipeline
    from node.settings import Settings

__all__ = ["PIPELINES", "PipelineBuilder", "build_pipeline"]

#: Builds one pipeline from the verified models and the node's settings.
PipelineBuilder = Callable[["ModelRegistry", "Settings"], "Pipeline"]


def _build_cxr(registry: ModelRegistry, settings: Settings) -> Pipeline:
    from node.pipelines.cxr import CxrPipeline

    return CxrPipeline.from_settings(registry, settings)


def _build_ct_pe(registry: ModelRegistry, settings: Settings) -> Pipeline:
    from node.pipelines.ct_pe import CtPePipeline

    return CtPePipeline.from_settings(registry, settings)


def _build_ct_lumbar(registry: ModelRegistry, settings: Settings) -> Pipeline:
    from node.pipelines.ct_lumbar import CtLumbarPipeline

    return CtLumbarPipeline.from_settings(registry, settings)


#: The pipelines the node can build, by name.
PIPELINES: dict[str, PipelineBuilder] = {
    "cxr": _build_cxr,
    "ct_pe": _build_ct_pe,
    "ct_lumbar": _build_ct_lumbar,
}


def build_pipeline(name: str, settings: Settings, registry: ModelRegistry) -> Pipeline:
    """Build the pipeline ``name`` (models loaded now, once).

    Raises
    ------
    ConfigError
        No pipeline has that name.
    """
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}")
    return PIPELINES[name](registry, settings)
