"""The shape of the dimse package: its public names, what it imports, its exception tree."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import dimse
from dimse import commands, errors, requestor, scu, upper_layer

PACKAGE = Path(dimse.__file__).resolve().parent
REPO = PACKAGE.parent
#: What dimse may import besides itself and the standard library.
ALLOWED_TOP_LEVEL = {"core", "pydicom", "pynetdicom"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in a file, at any depth (``if TYPE_CHECKING:`` included)."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _dimse_modules_imported(path: Path) -> set[str]:
    """The modules of dimse a file imports: ``from dimse.x import y`` and ``from dimse import x`` (a module)."""
    modules = set()
    for module, names in _imports(path):
        if module == "dimse":
            modules |= {f"dimse.{name}" for name in names if (PACKAGE / f"{name}.py").exists()} or {"dimse"}
        elif module.startswith("dimse."):
            modules.add(module)
    return modules


def test_public_names() -> None:
    assert sorted(dimse.__all__) == [
        "ACCEPTED_TRANSFER_SYNTAXES",
        "AllowedPeer",
        "AssociationEvent",
        "AssociationFailed",
        "DimseError",
        "NEGOTIATION",
        "StorageSCP",
        "StoreOutcome",
        "StoreRequest",
        "StoreSink",
        "echo",
        "encode_file_meta",
        "spool_part10",
        "store_files",
    ]
    for name in dimse.__all__:
        assert getattr(dimse, name) is not None, name


def test_everything_the_node_imports_from_dimse_is_public() -> None:
    """node/ may use dimse only through dimse.__all__ (whichever dimse module it names)."""
    used: dict[str, set[str]] = {}
    for path in sorted((REPO / "node").rglob("*.py")):
        for module, names in _imports(path):
            if module == "dimse" or module.startswith("dimse."):
                for name in names:
                    used.setdefault(name, set()).add(f"{path.relative_to(REPO)}: from {module}")
    assert used, "node/ imports nothing from dimse: this test no longer looks at the right place"
    private = {name: sorted(where) for name, where in used.items() if name not in dimse.__all__}
    assert not private, f"node/ uses names of dimse that dimse.__all__ does not export: {private}"


def test_dimse_imports_only_core_pydicom_pynetdicom_and_the_standard_library() -> None:
    outside = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for module, _names in _imports(path):
            top = module.split(".")[0]
            if top != "dimse" and top not in ALLOWED_TOP_LEVEL and top not in sys.stdlib_module_names:
                outside.setdefault(path.name, []).append(module)
    assert not outside


def test_no_import_cycle_between_dimse_modules() -> None:
    """The association once imported the SCP that imports it; no module of dimse may reach itself again."""
    graph = {
        f"dimse.{path.stem}" if path.stem != "__init__" else "dimse": _dimse_modules_imported(path)
        for path in PACKAGE.glob("*.py")
    }
    assert graph["dimse.scp"] >= {"dimse._association"}, "the SCP should build its associations"

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, route = stack.pop()
            for imported in graph.get(module, set()):
                if imported == start:
                    return [*route, start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*route, imported]))
        return None

    cycles = [cycle for module in graph if module != "dimse" if (cycle := cycle_from(module)) is not None]
    assert not cycles


@pytest.mark.parametrize(
    "error",
    [
        scu.AssociationFailed,
        requestor.AssociationError,
        upper_layer.ProtocolError,
        upper_layer.ConnectionClosed,
        commands.ProtocolViolation,
    ],
)
def test_every_dimse_error_has_the_one_base_and_keeps_its_old_import_path(error: type[Exception]) -> None:
    assert issubclass(error, dimse.DimseError)
    assert error.__name__ in {*errors.__all__, *scu.__all__}
    assert error is getattr(errors, error.__name__, error)


def test_protocol_error_aborts_with_invalid_pdu_parameter_by_default() -> None:
    assert errors.ProtocolError("bad").reason == upper_layer.ABORT_INVALID_PARAMETER
    assert errors.ProtocolError("bad", upper_layer.ABORT_UNEXPECTED_PDU).reason == upper_layer.ABORT_UNEXPECTED_PDU
