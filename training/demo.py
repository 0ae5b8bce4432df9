"""``ainode-train build-demo``: train every demo model on synthetic phantoms, with a progress bar.

A *recipe* is a function ``build(out_dir, work_dir, progress, quick) -> None`` in its
own module that writes ``out_dir/<name>/model.json`` (a demo manifest) and its weights,
using ``work_dir`` for generated data. Recipes are listed in :data:`RECIPES` as
``(name, "module:function", estimated_seconds)`` and imported only when run, so a
recipe whose module is missing or broken is reported by name and the others still
build. Each recipe function is marked with :func:`demo_recipe`, which names its model,
its parameters (the full run and the ``quick`` one) and the phantom generators its
data come from.

Each recipe runs in a staging folder (``out_dir/.building-<name>/``) that replaces
``out_dir/<name>/`` only when it succeeded, so a failed or interrupted build never
leaves half a model behind. The orchestrator then records a *recipe hash* in the
manifest's ``postprocessing["recipe_hash"]``: the SHA-256 of a canonical JSON of the
recipe's name, its parameters, the ``GENERATOR_VERSION`` of each phantom generator it
lists and the ``quick`` flag (:func:`recipe_hash`). A later run skips a recipe whose
manifest carries the same hash and whose weights match their checksum, unless ``force``.
Source bytes are not hashed, so formatting or commenting code retrains nothing: a
change to a generator's output bumps its ``GENERATOR_VERSION``, and a change to a
trainer that should give new weights changes a parameter of the recipe (its version).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

__all__ = [
    "RECIPES",
    "Progress",
    "RecipeError",
    "RecipeOutcome",
    "RecipeSpec",
    "build_demo",
    "demo_recipe",
    "generator_versions",
    "main",
    "recipe_hash",
    "recipe_identity",
]

RecipeFunction = TypeVar("RecipeFunction", bound=Callable[..., None])

RECIPES: tuple[tuple[str, str, int], ...] = (
    ("cxr-findings", "training.finding_classifier:build_demo", 260),
    ("cxr-four-class", "training.four_class:build_demo", 40),
    ("cxr-four-class-cnn", "training.four_class:build_demo_cnn", 10),
    ("cxr-detector", "training.detector:build_demo", 490),
    # The CT recipes train Xception and EfficientNetV2 on CT phantoms; both import TensorFlow in this
    # process (torch-based recipes run in a child process, so the import order cannot bite).
    ("ct-pe", "training.pe:build_demo", 2400),
    ("ct-lumbar", "training.lumbar:build_demo", 600),
)
"""Demo recipes in build order: model name, ``module:function``, estimated seconds on 2 cores (the chest
recipes as measured alone on the faster of two 2-core machines, which built the chest models in half the
time of the other; ct-pe and ct-lumbar as measured on the slower one)."""

_BAR = 30


class RecipeError(Exception):
    """A recipe cannot be found, imported or run (the message names it)."""


class Progress:
    """Progress of one recipe: a one-line bar on a terminal, plain lines otherwise.

    Parameters
    ----------
    name : str
        The recipe (model) name shown on every line.
    stream : TextIO, optional
        Where to write (``sys.stdout`` by default).
    tty : bool, optional
        Force the terminal (``\\r`` updates) or plain-line style; by default the
        stream's ``isatty()``.
    """

    def __init__(self, name: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last_plain = (-1, "")
        self._bar_open = False

    def step(self, done: int, total: int, message: str) -> None:
        """Report ``done`` of ``total`` units of the current stage, described by ``message``."""
        total = max(int(total), 1)
        fraction = min(max(done / total, 0.0), 1.0)
        elapsed = time.monotonic() - self.started
        if self.tty:
            filled = int(round(fraction * _BAR))
            line = (
                f"\r{self.name:<20} [{'#' * filled}{'.' * (_BAR - filled)}] {fraction:4.0%} "
                f"{done}/{total} {message[:40]:<40} {elapsed:5.0f} s"
            )
            self.stream.write(line)
            self.stream.flush()
            self._bar_open = True
            return
        # Plain lines: one per stage and per tenth of it, so logs stay short.
        stage = message.split(",")[0]
        decile = int(fraction * 10)
        if (decile, stage) != self._last_plain:
            self._last_plain = (decile, stage)
            self.stream.write(f"{self.name}: {message} {done}/{total} ({fraction:.0%}, {elapsed:.0f} s)\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        """Print a whole line (an epoch's figures, a result), keeping the bar below it."""
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(f"{self.name}: {message}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False


@dataclass(frozen=True)
class RecipeOutcome:
    """What happened to one recipe: ``built``, ``cached`` or ``failed``."""

    name: str
    state: str
    seconds: float
    message: str = ""


def _resolve(target: str) -> tuple[Any, Callable[..., None]]:
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise RecipeError(f"recipe target {target!r} is not 'module:function'")
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise RecipeError(f"recipe module {module_name!r} not found (is that model's code installed?)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken recipe must not stop the others
        raise RecipeError(f"recipe module {module_name!r} cannot be imported: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RecipeError(f"recipe module {module_name!r} has no function {function_name!r}")
    return module, function


def demo_recipe(
    name: str, *, parameters: Callable[[bool], Mapping[str, Any]], generators: Sequence[str]
) -> Callable[[RecipeFunction], RecipeFunction]:
    """Mark ``build(out_dir, work_dir, progress, quick)`` as the demo recipe of model ``name``.

    Parameters
    ----------
    name : str
        The model the recipe writes (``out_dir/<name>/``).
    parameters : callable
        ``parameters(quick)``: every constant the run depends on (sizes, counts, epochs, learning
        rates, seeds, architecture, version...), as JSON-able values; what :func:`recipe_hash` hashes.
    generators : sequence of str
        Modules whose ``GENERATOR_VERSION`` (an int, bumped when their output changes) the data of the
        recipe depend on (``training.phantoms.chest``...).
    """

    def mark(function: RecipeFunction) -> RecipeFunction:
        function.demo_recipe = RecipeSpec(name, parameters, tuple(generators))  # type: ignore[attr-defined]
        return function

    return mark


@dataclass(frozen=True)
class RecipeSpec:
    """What :func:`demo_recipe` records on a recipe function."""

    name: str
    parameters: Callable[[bool], Mapping[str, Any]]
    generators: tuple[str, ...]


def _spec(target: str, function: Callable[..., None]) -> RecipeSpec:
    spec = getattr(function, "demo_recipe", None)
    if not isinstance(spec, RecipeSpec):
        raise RecipeError(f"recipe {target!r} is not marked with training.demo.demo_recipe (its parameters)")
    return spec


def generator_versions(modules: Sequence[str]) -> dict[str, int]:
    """``{module: GENERATOR_VERSION}`` of the phantom generator modules named."""
    versions = {}
    for name in sorted(set(modules)):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise RecipeError(f"phantom generator {name!r} cannot be imported: {exc}") from exc
        version = getattr(module, "GENERATOR_VERSION", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise RecipeError(f"phantom generator {name!r} has no integer GENERATOR_VERSION")
        versions[name] = version
    return versions


def recipe_identity(target: str, quick: bool) -> dict[str, Any]:
    """What a recipe's hash covers: ``{recipe, parameters, generators, quick}`` (JSON-able)."""
    _, function = _resolve(target)
    spec = _spec(target, function)
    parameters = json.loads(json.dumps(spec.parameters(bool(quick))))  # tuples → lists, as in the canonical JSON
    return {
        "recipe": spec.name,
        "parameters": parameters,
        "generators": generator_versions(spec.generators),
        "quick": bool(quick),
    }


def recipe_hash(target: str, quick: bool) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of :func:`recipe_identity`."""
    canonical = json.dumps(recipe_identity(target, quick), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _cached(model_dir: Path, wanted_hash: str) -> bool:
    from models.errors import ModelError
    from models.manifest import load_manifest, sha256_file

    if not (model_dir / "model.json").is_file():
        return False
    try:
        manifest = load_manifest(model_dir / "model.json")
        return (
            manifest.postprocessing.get("recipe_hash") == wanted_hash
            and manifest.weights_path.is_file()
            and sha256_file(manifest.weights_path) == manifest.sha256
        )
    except (ModelError, OSError):
        return False


def _stamp(model_dir: Path, name: str, wanted_hash: str) -> None:
    from models.manifest import load_manifest

    path = model_dir / "model.json"
    if not path.is_file():
        raise RecipeError(f"recipe {name!r} finished without writing {name}/model.json")
    manifest = load_manifest(path)  # validates what the recipe wrote
    if manifest.name != name:
        raise RecipeError(f"recipe {name!r} wrote a manifest named {manifest.name!r}")
    if not manifest.demo:
        raise RecipeError(f'recipe {name!r} wrote a manifest without "demo": true')
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("postprocessing", {})["recipe_hash"] = wanted_hash
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_demo(
    out_dir: Path,
    *,
    only: Sequence[str] = (),
    force: bool = False,
    quick: bool = False,
    recipes: Sequence[tuple[str, str, int]] = RECIPES,
    stream: TextIO | None = None,
    tty: bool | None = None,
) -> list[RecipeOutcome]:
    """Run the demo recipes into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    out_dir : Path
        The models directory (``<out_dir>/<name>/model.json`` + weights).
    only : sequence of str
        Recipe names to run (all when empty).
    force : bool
        Rebuild even when the cached model's recipe hash matches.
    quick : bool
        Tiny runs (seconds; for tests, quality not checked).
    recipes : sequence
        ``(name, "module:function", estimated_seconds)``; :data:`RECIPES` by default.
    stream : TextIO, optional
        Where progress goes (``sys.stdout``).
    tty : bool, optional
        Force the progress style (see :class:`Progress`).

    Returns
    -------
    list of RecipeOutcome
        One per recipe run, in order.

    Raises
    ------
    RecipeError
        If ``only`` names a recipe that does not exist.
    """
    out_dir = Path(out_dir)
    names = [name for name, _, _ in recipes]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise RecipeError(f"no demo recipe named {', '.join(map(repr, unknown))} (recipes: {', '.join(names)})")
    chosen = [r for r in recipes if not only or r[0] in only]
    stream = stream or sys.stdout
    estimate = sum(seconds for _, _, seconds in chosen)
    stream.write(
        f"building {len(chosen)} demo model(s) into {out_dir} (about {estimate / 60:.0f} min on 2 cores"
        f"{', quick' if quick else ''})\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for name, target, _ in chosen:
        started = time.monotonic()
        progress = Progress(name, stream, tty)
        try:
            _, build = _resolve(target)
            if _spec(target, build).name != name:
                raise RecipeError(f"recipe {target!r} builds {_spec(target, build).name!r}, not {name!r}")
            wanted = recipe_hash(target, quick)
            if not force and _cached(out_dir / name, wanted):
                outcomes.append(RecipeOutcome(name, "cached", 0.0, "up to date (recipe unchanged)"))
                stream.write(f"{name}: up to date, skipped (use --force to rebuild)\n")
                continue
            staging = out_dir / f".building-{name}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                with tempfile.TemporaryDirectory(prefix=f"ainode-demo-{name}-") as work:
                    build(staging, Path(work), progress, quick)
                progress.close()
                _stamp(staging / name, name, wanted)
                final = out_dir / name
                if final.exists():
                    shutil.rmtree(final)
                (staging / name).rename(final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except Exception as exc:  # one recipe's failure must not stop the others
            progress.close()
            message = str(exc) if isinstance(exc, RecipeError) else f"{type(exc).__name__}: {exc}"
            outcomes.append(RecipeOutcome(name, "failed", time.monotonic() - started, message))
            stream.write(f"{name}: FAILED: {message}\n")
            continue
        seconds = time.monotonic() - started
        outcomes.append(RecipeOutcome(name, "built", seconds))
        stream.write(f"{name}: built in {seconds:.0f} s\n")
    stream.flush()
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.demo --out DIR [--force] [--quick] [--only NAME ...]``; exit 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="models directory to write")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--quick", action="store_true", help="tiny runs (tests; quality not checked)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="only this recipe (repeatable)")
    args = parser.parse_args(argv)
    return run_cli(args.out, force=args.force, quick=args.quick, only=args.only)


def run_cli(out: Path, *, force: bool, quick: bool, only: Sequence[str]) -> int:
    """Build, print a summary table (``core.table.format_table``), return 0 when every chosen recipe is built or
    cached."""
    from core.table import format_table

    try:
        outcomes = build_demo(out, only=only, force=force, quick=quick)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [(o.name, o.state, f"{o.seconds:.0f} s", o.message) for o in outcomes]
    print(format_table(["model", "state", "time", "note"], rows))
    return 0 if all(o.state != "failed" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
