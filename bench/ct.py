"""CT pipelines at full size: a 300-slice 512×512 CTPA through ``ct_pe`` and a 300-slice abdomen through ``ct_lumbar``.

Each pipeline runs with its **source design's architecture at 512** (the published systems the
pipelines reproduce: Xception with the nine PE heads; EfficientNetV2-M for the levels) with
random weights, since timing and memory do not depend on the weights' values; labels, windows
and decision parameters are the demo manifests' (``weights/ct-pe``, ``weights/ct-lumbar``).
The series are synthetic phantoms written as CT Image Storage files (``training.phantoms.ct``).

Each analysis runs in a fresh process, as a node worker would, calling the pipeline's
``analyse`` (series planning, model, result objects), and reports its wall time and its
own peak resident memory (``ru_maxrss``). The reference measured in the same run is the
floor every CT pipeline pays: reading the whole series' Hounsfield units once
(``iter_hu_batches``). Targets (issue 4): PE ≤ 60 s and ≤ 3 GB; lumbar ≤ 20 s.

    .venv/bin/python bench/ct.py [--slices 300] [--size 512] [--threads 2] [--profile] [--only pe|lumbar]

The source-size ONNX models are built once (TensorFlow, the ``train`` extra; V2-M export
needs ~13 GB of memory) and cached in ``bench/.cache/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

CACHE = REPO / "bench" / ".cache" / "ct-models"
TARGETS = {"ct_pe": (60.0, 3.0), "ct_lumbar": (20.0, None)}
MODEL_OF = {"ct_pe": "ct-pe", "ct_lumbar": "ct-lumbar"}

_BUILD = {
    "ct-pe": (
        "from training.pe import build_model, export_pe_onnx\n"
        "export_pe_onnx(build_model({size}), {path!r}, fp16_weights=False)\n"
    ),
    "ct-lumbar": (
        "from training.architectures import export_onnx\n"
        "from training.lumbar import build_model\n"
        "export_onnx(build_model('V2M', {size}, channels={channels}), {path!r})\n"
    ),
}


def seed_model(name: str, size: int) -> Path:
    """Folder holding ``model.json`` + ``model.onnx`` of the seed architecture at ``size`` (random weights)."""
    from models.manifest import sha256_file

    demo_path = REPO / "weights" / name / "model.json"
    if not demo_path.is_file():
        raise SystemExit(
            f"{demo_path.relative_to(REPO)} is missing: the bench takes labels, windows and decision "
            f"parameters from the demo manifest (build it with `ainode-train build-demo`)"
        )
    demo = json.loads(demo_path.read_text())
    channels = int(demo["input"]["channels"])
    # The graph's input depends on the size and on the number of windows (channels) of the demo manifest.
    folder = CACHE / f"{name}-{size}-{channels}ch"
    onnx = folder / "model.onnx"
    if not onnx.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(
            f"building {name} at {size} px with random weights (once; cached in {folder.relative_to(REPO)}) ...",
            flush=True,
        )
        code = _BUILD[name].format(size=size, path=str(onnx) + ".part", channels=channels)
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        (folder / "model.onnx.part").rename(onnx)
    manifest = dict(demo)
    manifest.update(
        weights="model.onnx",
        sha256=sha256_file(onnx),
        version="bench-random-weights",
        description=f"{name}: seed architecture at {size} px, RANDOM weights, for bench/ct.py only",
    )
    manifest["input"] = {**demo["input"], "height": size, "width": size}
    manifest.pop("card", None)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder


def write_phantom(kind: str, folder: Path, slices: int, size: int) -> list[Path]:
    from training.phantoms.ct import abdomen_phantom, ctpa_phantom

    if kind == "ct_pe":
        phantom = ctpa_phantom(7, slices=slices, size=size, embolus="right")
    else:  # 1 mm slices over 300 mm: T12 to the sacrum with margin
        phantom = abdomen_phantom(7, slices=slices, size=size, spacing_z=max(1.0, 280.0 / slices))
    return phantom.write_series(folder)


_CHILD = r"""
import cProfile, io, json, pstats, resource, sys, time
from pathlib import Path
import pydicom
from models.registry import ModelRegistry
from node.pipelines.{module} import {cls}

paths = sorted(Path({folder!r}).glob("*.dcm"))
registry = ModelRegistry.discover(Path({models!r}))
started = time.perf_counter()
pipeline = {cls}(registry, uid_root="1.2.826.0.1.3680043.10.1234", threads={threads})
loaded = time.perf_counter()
first = pydicom.dcmread(paths[0], stop_before_pixels=True)
profiler = cProfile.Profile() if {profile} else None
if profiler: profiler.enable()
before = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
out = pipeline.analyse(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), paths)
wall = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
if profiler:
    profiler.disable()
    text = io.StringIO(); pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(18)
    print(text.getvalue(), file=sys.stderr)
rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({{"wall": wall, "cpu": cpu, "load": loaded - started, "rss_gb": rss_gb,
                  "summary": out.summary, "objects": [str(o.Modality) for o in out.objects]}}))
"""


def hu_floor(folder: Path) -> float:
    """Seconds to plan the series and read all its HU once, in this process (the reference)."""
    import pydicom

    from models.preprocess.ct_series import iter_hu_batches, plan_series

    t0 = time.perf_counter()
    paths = sorted(folder.glob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    plan = plan_series(headers)
    by_uid = {str(h.SOPInstanceUID): p for h, p in zip(headers, paths, strict=False)}
    for _ in iter_hu_batches(plan, by_uid, batch_size=16):
        pass
    return time.perf_counter() - t0


def run(kind: str, folder: Path, models: Path, threads: int, profile: bool) -> dict:
    module, cls = ("ct_pe", "CtPePipeline") if kind == "ct_pe" else ("ct_lumbar", "CtLumbarPipeline")
    code = _CHILD.format(
        module=module, cls=cls, folder=str(folder), models=str(models), threads=threads, profile=profile
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
    if profile:
        print(f"--- profile of {kind} (cumulative) ---\n{done.stderr[-6000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="model input size (the seeds use 512)")
    parser.add_argument("--image-size", type=int, default=512, help="rows and columns of the CT slices")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["pe", "lumbar"])
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each analysis")
    args = parser.parse_args()
    kinds = [k for k in ("ct_pe", "ct_lumbar") if args.only is None or k == f"ct_{args.only}"]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-ct-"))
    try:
        for kind in kinds:
            name = MODEL_OF[kind]
            models = work / f"models-{kind}"
            models.mkdir()
            shutil.copytree(seed_model(name, args.size), models / name)
            series = work / f"series-{kind}"
            t0 = time.perf_counter()
            write_phantom(kind, series, args.slices, args.image_size)
            print(
                f"{kind}: wrote {args.slices} slices of {args.image_size}² in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            floor = hu_floor(series)
            result = run(kind, series, models, args.threads, args.profile)
            target_s, target_gb = TARGETS[kind]
            rows.append(
                [
                    kind,
                    f"{args.slices} × {args.image_size}²",
                    f"{result['wall']:.1f}",
                    f"{target_s:.0f}",
                    f"{result['wall'] / target_s:.2f}",
                    f"{result['cpu']:.1f}",
                    f"{result['cpu'] / args.threads:.1f}",
                    f"{result['rss_gb']:.2f}",
                    f"{target_gb:.1f}" if target_gb else "–",
                    f"{floor:.1f}",
                    f"{result['wall'] / floor:.1f}×",
                    f"{result['load']:.1f}",
                    "+".join(result["objects"]),
                ]
            )
            print(f"{kind}: {result['summary']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print()
    # Other processes on the machine share the two cores: the load average says how far the times
    # are from an idle machine's.
    print(
        f"load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        "CPU s: processor time of the analysis; CPU s / threads is what the wall time would be"
        " with the threads' cores to itself"
    )
    print(
        table(
            [
                "pipeline",
                "series",
                "wall s",
                "target s",
                "wall/target",
                "CPU s",
                "CPU s / threads",
                "peak RSS GB",
                "target GB",
                "HU read s (ref)",
                "wall/ref",
                "model load s",
                "objects",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
