"""What the writers share: SeriesParams checked when made, one exception tree, and public helpers only."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

import sr_writer
from sr_writer import (
    InvalidResultError,
    ParameterError,
    ParameterTypeError,
    SeriesParams,
    UnknownConceptError,
    WriterError,
    build_key_object_selection,
    build_measurement_report,
    code,
)
from tests.sr_writer.scenarios import UID_ROOT, frontal_image, series_result

PACKAGE = Path(sr_writer.__file__).parent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uid_root": "1.2.x"}, "UID root"),
        ({"uid_root": ""}, "UID root is empty"),
        ({"series_number": 0}, '"series_number" should be an integer from 1'),
        ({"series_number": 2**31}, '"series_number" should be an integer from 1'),
        ({"instance_number": -1}, '"instance_number" should be an integer from 1'),
        ({"series_description": "x" * 65}, '"series_description" .* does not fit a DICOM LO value'),
        ({"institution_name": "General\\Hospital"}, '"institution_name" .* does not fit a DICOM LO value'),
    ],
)
def test_series_params_refuse_bad_values_naming_the_argument(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"uid_root": UID_ROOT, "series_number": 990, **change}
    with pytest.raises(ParameterError, match=message) as caught:
        SeriesParams(**arguments)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, WriterError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uid_root": 1.2}, '"uid_root" should be a str, got float'),
        ({"series_number": "990"}, '"series_number" should be an int, got str'),
        ({"series_number": True}, '"series_number" should be an int, got bool'),
        ({"instance_number": 1.0}, '"instance_number" should be an int, got float'),
        ({"institution_name": 7}, '"institution_name" should be a str or None, got int'),
    ],
)
def test_series_params_refuse_wrong_types_naming_the_argument(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"uid_root": UID_ROOT, "series_number": 990, **change}
    with pytest.raises(ParameterTypeError, match=message) as caught:
        SeriesParams(**arguments)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, WriterError)


def test_series_params_are_frozen_and_renumbered_with_the_same_checks() -> None:
    params = SeriesParams(UID_ROOT, 990, institution_name="Test Hospital")
    assert (params.instance_number, params.series_description) == (1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.series_number = 991  # type: ignore[misc]
    second = params.with_series_number(991)
    assert (second.series_number, second.uid_root, second.institution_name) == (991, UID_ROOT, "Test Hospital")
    assert params.series_number == 990
    with pytest.raises(ParameterError, match='"series_number"'):
        params.with_series_number(0)
    # A NumPy integer is a number as good as an int (a setting read from an array, say).
    assert SeriesParams(UID_ROOT, np.int64(992)).series_number == 992  # type: ignore[arg-type]


def test_series_description_is_the_writers_own_unless_given(rg1_header: Dataset) -> None:
    result = series_result([frontal_image(rg1_header)], rg1_header)
    sr = build_measurement_report(result, [rg1_header], SeriesParams(UID_ROOT, 990))
    assert sr.SeriesDescription == "AI results"
    named = SeriesParams(UID_ROOT, 990, instance_number=4, series_description="Chest AI")
    sr = build_measurement_report(result, [rg1_header], named)
    assert (sr.SeriesDescription, sr.SeriesNumber, sr.InstanceNumber) == ("Chest AI", 990, 4)
    assert "InstitutionName" not in sr


def test_every_refusal_of_a_writer_is_a_writer_error(rg1_header: Dataset) -> None:
    params = SeriesParams(UID_ROOT, 995)
    result = series_result([frontal_image(rg1_header)], rg1_header)
    with pytest.raises(ParameterError, match="KOS title 'Rejected'"):
        build_key_object_selection(result, [rg1_header], ["1.2.3"], params, title="Rejected", description="x")
    with pytest.raises(InvalidResultError, match="not among the sources"):
        build_key_object_selection(result, [rg1_header], ["1.2.3"], params, title="of_interest", description="x")
    result.images[0].view = None
    with pytest.raises(InvalidResultError, match="nothing to report") as nothing:
        build_measurement_report(result, [rg1_header], params)
    assert isinstance(nothing.value, ValueError)
    with pytest.raises(UnknownConceptError, match="unicorn") as unknown:
        code("unicorn")
    assert isinstance(unknown.value, KeyError) and isinstance(unknown.value, WriterError)


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from module import name`` in ``path``; (module, "") for ``import module``."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, "") for alias in node.names)
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_writers_use_only_public_names_of_each_other_and_only_core_of_the_node(module: str) -> None:
    for imported, name in _imports(PACKAGE / module):
        top = imported.split(".")[0]
        assert top not in {"node", "dimse", "models", "training"}, f"{module} imports {imported}"
        if top == "sr_writer":
            assert not name.startswith("_"), f"{module} imports the private {imported}.{name}"
