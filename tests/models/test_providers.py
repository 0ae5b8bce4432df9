"""ONNX Runtime execution providers per device (issue 17: GPU workers; this machine's tests run on the CPU).

The onnxruntime wheel here is the CPU build: it knows CUDAExecutionProvider but does not have it,
and has AzureExecutionProvider and CPUExecutionProvider. The provider choice is checked against
that real build, and a session created afterwards (the committed view filter's weights) is asked
which providers it runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from models.backends.onnx_backend import OnnxModel
from models.backends.providers import (
    CPU_PROVIDER,
    check_provider_names,
    choose_providers,
    onnx_providers,
    set_onnx_providers,
)
from models.errors import ModelError
from models.manifest import Manifest
from models.registry import ModelRegistry
from node.errors import ConfigError
from node.settings import DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE, Settings, load_settings

CUDA = "CUDAExecutionProvider"
AZURE = "AzureExecutionProvider"


@pytest.fixture(autouse=True)
def _cpu_after() -> Iterator[None]:
    """The process's providers are global: every test leaves them as the rest of the suite expects."""
    yield
    set_onnx_providers([CPU_PROVIDER])


@pytest.fixture(scope="module")
def view_filter_manifest() -> Manifest:
    return ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE).require("cxr-view-filter")


def test_this_build_is_the_cpu_build_the_tests_assume() -> None:
    assert CUDA in ort.get_all_providers() and CUDA not in ort.get_available_providers()
    assert {AZURE, CPU_PROVIDER} <= set(ort.get_available_providers())


def test_cuda_requested_on_a_cpu_build_falls_back_to_cpu_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ainode.models"):
        chosen = choose_providers([CUDA, CPU_PROVIDER])
    assert chosen == [CPU_PROVIDER]
    [record] = caplog.records
    assert CUDA in record.getMessage() and "not available" in record.getMessage()
    assert record.getMessage().endswith(f"using {CPU_PROVIDER}")


def test_only_missing_providers_leave_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ainode.models"):
        assert choose_providers([CUDA, "TensorrtExecutionProvider"]) == [CPU_PROVIDER]
    [record] = caplog.records
    assert "CUDAExecutionProvider, TensorrtExecutionProvider" in record.getMessage()


@pytest.mark.parametrize("order", [[AZURE, CPU_PROVIDER], [CPU_PROVIDER, AZURE]])
def test_available_providers_keep_the_configured_order_without_a_warning(
    order: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ainode.models"):
        assert choose_providers(order) == order
        # A missing one in the middle is dropped; the others keep their places.
        assert choose_providers([order[0], CUDA, order[1]]) == order
    assert len(caplog.records) == 1


def test_a_build_with_cuda_keeps_it_first() -> None:
    """What a GPU worker's onnxruntime-gpu build would choose (its available list given)."""
    assert choose_providers([CUDA, CPU_PROVIDER], available=[CUDA, CPU_PROVIDER]) == [CUDA, CPU_PROVIDER]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["CudaExecutionProvider"], "unknown ONNX Runtime execution provider.*'CudaExecutionProvider'.*known: .*CUDA"),
        (["CPU"], "unknown ONNX Runtime execution provider.*'CPU'"),
        ([], "no ONNX Runtime execution provider listed"),
        ([CPU_PROVIDER, CPU_PROVIDER], "listed twice: CPUExecutionProvider"),
    ],
)
def test_bad_provider_lists_are_refused_by_name(names: list[str], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        check_provider_names(names)
    with pytest.raises(ModelError, match=message):
        set_onnx_providers(names)
    assert onnx_providers() == [CPU_PROVIDER]  # a refused list changes nothing


def test_sessions_created_after_the_choice_run_on_it(view_filter_manifest: Manifest) -> None:
    assert OnnxModel(view_filter_manifest).providers == [CPU_PROVIDER]  # the default
    assert set_onnx_providers([AZURE, CPU_PROVIDER]) == [AZURE, CPU_PROVIDER]
    assert OnnxModel(view_filter_manifest).providers == [AZURE, CPU_PROVIDER]
    assert set_onnx_providers([CUDA, CPU_PROVIDER]) == [CPU_PROVIDER]
    model = OnnxModel(view_filter_manifest)
    assert model.providers == [CPU_PROVIDER]


def test_settings_list_providers_per_device() -> None:
    settings = Settings()
    assert settings.device == "cpu"
    assert settings.providers_for() == [CPU_PROVIDER]
    assert settings.providers_for("gpu") == [CUDA, CPU_PROVIDER]
    with pytest.raises(ConfigError, match="device 'tpu' is not configured; devices: cpu, gpu"):
        settings.providers_for("tpu")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("devices: {gpu: [CUDAExecutionProvidr, CPUExecutionProvider]}\ndevice: gpu\n", "CUDAExecutionProvidr"),
        ("device: tpu\n", "device 'tpu' is not one of devices"),
        ("devices: {cpu: []}\n", "no ONNX Runtime execution provider listed"),
        ("devices: {GPU: [CPUExecutionProvider]}\n", "device name 'GPU'"),
    ],
)
def test_a_bad_devices_section_is_a_config_error(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)
