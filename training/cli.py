"""The ``ainode-train`` command (the ``[train]`` extra): train, build and evaluate models.

::

    ainode-train build-demo [--out DIR] [--force] [--quick] [--only NAME]   demo weights from phantoms
    ainode-train evaluate NAME [--count N] [--write] [--out DIR]   a demo model on fresh phantoms (card section)
    ainode-train view-filter|finding-classifier|four-class|ct-pe|ct-lumbar --data DIR [--out DIR] [trainer options]
    ainode-train detector convert|train|evaluate ...   ChestX-Det → YOLO, Ultralytics training, mAP

The node's own command (``ainode``) serves; it imports no training code. This one reads
the node's settings only for the default models directory (``--config`` or
``$AINODE_CONFIG``, then ``AINODE_*`` variables, as ``ainode``). A trainer's options are
its own: ``ainode-train MODEL --help`` prints them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TRAINERS", "build_parser", "main"]

TRAINERS: dict[str, tuple[str, str | None]] = {
    "view-filter": ("training.view_filter:main", "cxr-view-filter"),
    "finding-classifier": ("training.finding_classifier:main", "cxr-findings"),
    "four-class": ("training.four_class:main", "cxr-four-class"),
    "detector": ("training.detector:main", None),
    "ct-pe": ("training.pe:main", "ct-pe"),
    "ct-lumbar": ("training.lumbar:main", "ct-lumbar"),
}
"""``ainode-train MODEL``: the trainer's ``module:main`` and the folder of the models directory it writes by
default (``None``: the trainer's subcommands take their own ``--out``, passed through as given)."""

PROG = "ainode-train"

CONFIG_HELP = """configuration (only for the default models directory, models_dir):
  the file given by 'ainode-train --config FILE COMMAND', else $AINODE_CONFIG,
  else config/node.yaml of this installation; then AINODE_<KEY> variables
  (AINODE_MODELS_DIR=/srv/models), as for 'ainode'."""


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit 2."""


def _models_dir(config: str | None) -> Path:
    from node.settings import load_settings

    return load_settings(config).models_dir


def cmd_build_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``build-demo``: run the demo recipes into the models directory (``training.demo``)."""
    from training.demo import run_cli

    out = Path(args.out) if args.out else _models_dir(args.config)
    return run_cli(out, force=args.force, quick=args.quick, only=args.only)


def cmd_evaluate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``evaluate NAME [--count N] [--write]``: a demo model on fresh phantoms (``training.evaluation``)."""
    from training.evaluation import EVALUATIONS, evaluate, render_table, write_evaluation

    if args.name not in EVALUATIONS:
        raise UsageError(f"evaluate needs a model name, one of {', '.join(EVALUATIONS)}")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    model_dir = (Path(args.out) if args.out else _models_dir(args.config)) / args.name
    try:
        ev = evaluate(args.name, model_dir, args.count)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(render_table(ev))
    if args.write:
        write_evaluation(model_dir, ev)
        print(f"wrote {model_dir / 'evaluation.json'} and the generated section of {model_dir / 'MODEL_CARD.md'}")
    return 0


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``MODEL [--data DIR] [--out DIR] [options]``: the trainer's ``main`` with the rest of the command line."""
    target, folder = TRAINERS[args.command]
    module_name, _, function = target.partition(":")
    try:
        train_main = getattr(importlib.import_module(module_name), function)
    except ImportError as exc:
        raise UsageError(f"trainer {target} cannot be imported ({exc}); install the [train] extra") from exc
    if args.train_help:  # the trainer's own parser (or its subcommand's) lists its options (--steps, --seed, ...)
        argv = [*extra, "--help"]
    elif folder is None:
        argv = [*extra] + (["--data", args.data] if args.data else []) + (["--out", args.out] if args.out else [])
    else:
        out = args.out or str(_models_dir(args.config) / folder)
        argv = (["--data", args.data] if args.data else []) + ["--out", out] + [*extra]
    try:
        return int(train_main(argv) or 0)
    except SystemExit as exc:  # the trainer's argparse: --help (0) or a usage error it already printed (2)
        return exc.code if isinstance(exc.code, int) else 2


def build_parser() -> argparse.ArgumentParser:
    """The ``ainode-train`` parser (trainer options are parsed by each trainer)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, build and evaluate the models of the DICOM AI node (extra [train])",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="node.yaml for models_dir (default: $AINODE_CONFIG or config/node.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-demo", help="train the demo models on synthetic phantoms (skips unchanged recipes)")
    p.add_argument("--out", help="models directory (default: the settings' models_dir)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--quick", action="store_true", help="tiny runs for tests (quality not checked)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this recipe (repeatable)")
    p.set_defaults(func=cmd_build_demo)
    p = sub.add_parser("evaluate", help="a demo model on fresh phantoms, as served (the card's generated section)")
    p.add_argument("name", nargs="?", help="the model (cxr-findings, cxr-detector, ct-pe, ct-lumbar)")
    p.add_argument("--count", type=int, help="phantoms per kind, CTPA pairs or abdomen series per spacing")
    p.add_argument(
        "--write", action="store_true", help="store evaluation.json and rewrite the model card's generated section"
    )
    p.add_argument("--out", help="models directory (default: the settings' models_dir)")
    p.set_defaults(func=cmd_evaluate)
    for name, (_, folder) in TRAINERS.items():
        # No help of its own: 'ainode-train MODEL --help' is the trainer's, with all its options.
        p = sub.add_parser(
            name,
            help=f"train {folder or 'the chest detector (subcommands)'}; its options: {PROG} {name} --help",
            add_help=False,
            usage=f"{PROG} {name} [--data DIR] [--out DIR] [trainer options]; {PROG} {name} --help",
        )
        p.add_argument("-h", "--help", action="store_true", dest="train_help", help="the trainer's own options")
        p.add_argument("--data", help="the training data (see the trainer's --help)")
        p.add_argument("--out", help="model folder to write" + (f" (default: models_dir/{folder})" if folder else ""))
        p.set_defaults(func=cmd_train)  # further options (--steps, --seed, ...) go to the trainer
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ainode-train``; returns the exit status (2 for a usage error, printed as one line)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is not cmd_train:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from node.errors import ConfigError

        if isinstance(exc, ConfigError):  # the node's settings (models_dir): a configuration a user can fix
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
