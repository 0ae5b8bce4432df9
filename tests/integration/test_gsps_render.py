"""The cxr pipeline's GSPS and Secondary Capture as DCMTK renders them (issue 18).

The shipped models (view filter, classifiers, demo detector) run in-process, with ``secondary_capture: true``, on:

- ``nodule``: the chest phantom of test_cxr_full.py with a planted nodule, which the detector boxes;
- ``normal``: a phantom with no finding (no box: the GSPS holds only the caption);
- ``nowin``: the nodule phantom without a window, so the GSPS carries the writer's own full-range window;
- ``rg1``: the real CR ``RG1_UNCR.dcm`` (MONOCHROME1, 1841×1955; the detector boxes nothing there).

``dcmp2pgm -p GSPS IMAGE`` renders the image through the presentation state: its displayed area, VOI,
presentation LUT, shutters and overlays, **not** its graphic and text annotations (DCMTK leaves drawing those
to the viewer built on its library: the bitmap equals the image's own rendering, which these tests assert).
So the box is checked where DCMTK does read it: ``dcmp2pgm -v`` prints the state as DCMTK understood it,
with each annotation's coordinates and only the annotations that apply to the image it was given. The test
asserts that DCMTK's polyline is the detector's box (the pipeline's finding, the SR's SCOORD, the planted
nodule) and that it lies on the nodule in DCMTK's own rendering; then it draws DCMTK's polylines and texts
over DCMTK's bitmap, which is what a presentation-state viewer shows (``*-gsps-dcmtk.png``).

The Secondary Capture has its box burned in: ``dcm2pnm`` renders it, and the box's colour must lie along the
detector's box, the banner must hold text in the top-left corner, and every other pixel must be the source as
DCMTK renders it. The PNGs are kept in ``gsps-renderings`` in pytest's base temporary folder.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from core.findings import Region
from models.registry import ModelRegistry
from node.pipelines.cxr import CxrPipeline
from node.settings import DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE, CxrSettings, Settings
from sr_writer.gsps import GRAPHIC_LAYER
from sr_writer.sc import BOX_COLOUR
from tests.helpers import require_tool, rg1_uncr_path, tool_env
from tests.integration.srread import walk
from training.phantoms import chest_phantom, phantom_dataset

#: The phantoms of test_cxr_full.py: the detector boxes the nodule of the first, finds nothing on the second.
NODULE_SEED, NORMAL_SEED = 7_000_003, 7_000_004
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: The caption's mark of a demo model, in the GSPS text and the SC banner.
DEMO_MARK = "DEMO - not for diagnosis"
ALL = ("nodule", "normal", "nowin", "rg1")
_PAIR = re.compile(r"(-?[\d.]+)\\(-?[\d.]+)")


@dataclass
class Case:
    """One source image, what the pipeline found on it and the files of the objects it wrote."""

    source_path: Path
    source: pydicom.Dataset
    boxes: list[Region]  # the detector's boxes, in source pixels
    truth: list[tuple[int, int, int, int]]  # the planted nodules of a phantom
    sr: pydicom.Dataset
    gsps: list[Path] = field(default_factory=list)
    sc: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Rendering:
    """What ``dcmp2pgm`` made of an image (with a presentation state or without): its bitmap and, from its
    verbose dump, the state as DCMTK read it."""

    pixels: np.ndarray  # rows x columns, 8 bits
    layers: list[str]
    displayed_area: tuple[float, float, float, float]  # TLHC column, row; BRHC column, row (pixels from 1)
    voi: str
    polylines: list[np.ndarray]  # each (points, 2): column, row in image pixels
    texts: list[tuple[str, tuple[float, float, float, float]]]  # text, bounding box (left, top, right, bottom)

    def to_bitmap(self, points: np.ndarray) -> np.ndarray:
        """Image pixel coordinates (column, row; 0 at the top-left pixel's corner) on the bitmap, which shows
        the displayed area scaled to the bitmap's size."""
        left, top, right, bottom = self.displayed_area
        scale = np.array(
            [self.pixels.shape[1] / (right - left + 1), self.pixels.shape[0] / (bottom - top + 1)], dtype=float
        )
        return (np.asarray(points, dtype=float) - [left - 1, top - 1]) * scale


def dcmp2pgm(image: Path, out: Path, pstate: Path | None = None) -> Rendering:
    """Render ``image`` (through ``pstate``) with DCMTK's dcmp2pgm: exit 0 and nothing but its verbose dump."""
    tool = require_tool("dcmp2pgm")
    args = [tool, "-v", *(["-p", str(pstate)] if pstate else []), str(image), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, env=tool_env(), timeout=120)
    assert done.returncode == 0, f"dcmp2pgm failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    lines = done.stderr.splitlines()
    complaints = [line for line in lines if not line.startswith("I:")]
    assert not complaints and not done.stdout.strip(), f"dcmp2pgm complained:\n{done.stdout}{done.stderr}"
    dump = "\n".join(line.removeprefix("I:").strip() for line in lines)
    area = re.search(r"displayed area TLHC=(\S+) BRHC=(\S+)", dump)
    assert area is not None, dump
    corners = [float(v) for pair in _PAIR.findall(f"{area[1]} {area[2]}") for v in pair]
    voi = re.search(r"VOI transformation: (.*)", dump)
    polylines = [
        np.array([[float(x), float(y)] for x, y in _PAIR.findall(coordinates)])
        for kind, coordinates in re.findall(r"graphic \d+: points=\d+ type=(\w+).*\n\s*coordinates: (.*)", dump)
        if kind == "polyline"
    ]
    texts = [
        (text, (float(a), float(b), float(c), float(d)))
        for text, a, b, c, d in re.findall(
            r'text \d+: "(.*)"\n.*\n\s*bounding box: TLHC=(\S+)\\(\S+) BRHC=(\S+)\\(\S+) units=pixel', dump
        )
    ]
    assert len(texts) == sum(int(n) for n in re.findall(r"Number of text objects: (\d+)", dump)), dump
    assert len(polylines) == sum(int(n) for n in re.findall(r"Number of graphic objects: (\d+)", dump)), dump
    return Rendering(
        pixels=np.asarray(Image.open(out)),
        layers=re.findall(r"Graphic Layer #\d+ \[(.*)\]", dump),
        displayed_area=(corners[0], corners[1], corners[2], corners[3]),
        voi=voi[1] if voi else "",
        polylines=polylines,
        texts=texts,
    )


def dcm2pnm(image: Path, out: Path) -> np.ndarray:
    """An RGB Secondary Capture rendered by DCMTK's dcm2pnm (a PPM): rows x columns x 3."""
    tool = require_tool("dcm2pnm")
    done = subprocess.run([tool, str(image), str(out)], capture_output=True, text=True, env=tool_env(), timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), f"dcm2pnm failed ({done.returncode}):\n{done.stderr}"
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """Run the cxr pipeline with the shipped models and the Secondary Capture on; write its objects to files."""
    work = tmp_path_factory.mktemp("gsps-render")
    settings = Settings(data_dir=work / "data", cxr=CxrSettings(secondary_capture=True))
    pipeline = CxrPipeline.from_settings(ModelRegistry.discover(DEFAULT_MODELS_DIR, DEFAULT_MODELS_FILE), settings)
    assert not pipeline.missing, pipeline.missing
    nodule = chest_phantom(NODULE_SEED, ["Nodule"])
    sources: dict[str, tuple[pydicom.Dataset, list[tuple[int, int, int, int]]]] = {
        "nodule": (phantom_dataset(nodule), [b.as_tuple() for b in nodule.boxes_of("Nodule")]),
        "normal": (phantom_dataset(chest_phantom(NORMAL_SEED)), []),
        "rg1": (pydicom.dcmread(rg1_uncr_path()), []),
    }
    windowless = phantom_dataset(nodule)
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if keyword in windowless:
            delattr(windowless, keyword)
    windowless.SOPInstanceUID = pydicom.uid.generate_uid()
    sources["nowin"] = (windowless, sources["nodule"][1])

    found: dict[str, Case] = {}
    for name, (dataset, truth) in sources.items():
        path = work / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        output = pipeline.analyse(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), [path])
        assert output.warnings == [], output.warnings
        [image] = output.result.images
        [sr] = [ds for ds in output.objects if ds.Modality == "SR"]
        case = Case(path, dataset, [f.region for f in image.findings if f.region is not None], truth, sr)
        for number, ds in enumerate(output.objects):
            target = work / f"{name}-{ds.Modality.lower()}-{number}.dcm"
            if ds.SOPClassUID in (PR_CLASS, SC_CLASS):
                ds.save_as(target, enforce_file_format=True)
                (case.gsps if ds.SOPClassUID == PR_CLASS else case.sc).append(target)
        found[name] = case
    return found


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the PNGs go: ``gsps-renderings`` in pytest's base temporary folder, kept as the test's artefacts."""
    folder = tmp_path_factory.getbasetemp() / "gsps-renderings"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def rendered(cases: dict[str, Case], renderings: Path) -> dict[str, tuple[Rendering, Rendering]]:
    """Each source rendered by dcmp2pgm through its GSPS and on its own; the PNGs saved, DCMTK's annotations
    drawn over its bitmap as a presentation-state viewer draws them."""
    work = renderings / "pgm"
    work.mkdir(exist_ok=True)
    out: dict[str, tuple[Rendering, Rendering]] = {}
    for name, case in cases.items():
        [gsps] = case.gsps
        with_state = dcmp2pgm(case.source_path, work / f"{name}-gsps.pgm", gsps)
        plain = dcmp2pgm(case.source_path, work / f"{name}-plain.pgm")
        Image.fromarray(with_state.pixels).save(renderings / f"{name}-dcmp2pgm.png")
        Image.fromarray(plain.pixels).save(renderings / f"{name}-plain.png")
        _annotated(with_state).save(renderings / f"{name}-gsps-dcmtk.png")
        out[name] = (with_state, plain)
    return out


def _annotated(rendering: Rendering) -> Image.Image:
    """DCMTK's bitmap with the polylines and texts DCMTK read drawn over it."""
    canvas = Image.fromarray(rendering.pixels).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, canvas.height // 400)
    for line in rendering.polylines:
        draw.line([tuple(p) for p in rendering.to_bitmap(line)], fill=(0, 255, 0), width=width)
    for text, box in rendering.texts:
        (left, top), (_, bottom) = rendering.to_bitmap(np.array([box[:2], box[2:]]))
        draw.text((left, top), text, fill=(0, 255, 0), font_size=max(10.0, (bottom - top) * 0.8))
    return canvas


def _corners(region: Region) -> np.ndarray:
    r = region
    return np.array(
        [[r.x_min, r.y_min], [r.x_max, r.y_min], [r.x_max, r.y_max], [r.x_min, r.y_max], [r.x_min, r.y_min]]
    )


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _sr_boxes(sr: pydicom.Dataset) -> list[tuple[float, float, float, float]]:
    """Bounds (column, row min; column, row max) of every SCOORD of the SR."""
    found = []
    for item in walk(sr):
        if item.get("ValueType") == "SCOORD":
            points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
            found.append((points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()))
    return found


@pytest.mark.parametrize("name", ALL)
def test_dcmtk_reads_the_gsps_over_the_whole_image_with_the_sources_look(
    name: str, cases: dict[str, Case], rendered: dict[str, tuple[Rendering, Rendering]]
) -> None:
    """dcmp2pgm takes each GSPS without a word; its displayed area is the whole image at its own size; the
    image looks as without the GSPS (its window; MONOCHROME1 kept white-is-low by the INVERSE presentation
    LUT), and for the windowless image the writer's full-range window gives the nodule phantom's own look
    (not black, not flat); the caption with the DEMO mark lies inside the displayed area."""
    case = cases[name]
    with_state, plain = rendered[name]
    rows, columns = int(case.source.Rows), int(case.source.Columns)
    assert with_state.layers == [GRAPHIC_LAYER]
    assert with_state.displayed_area == (1, 1, columns, rows)
    assert with_state.pixels.shape == (rows, columns)
    reference = rendered["nodule"][1] if name == "nowin" else plain
    assert np.array_equal(with_state.pixels, reference.pixels), (
        f"{name}: the GSPS ({with_state.voi}) renders differently from the image's own rendering ({reference.voi})"
    )
    assert with_state.pixels.std() > 20 and with_state.pixels.max() - with_state.pixels.min() > 150
    [caption] = [text for text, _ in with_state.texts if text.startswith("AI: ")]
    assert DEMO_MARK in caption
    for text, (left, top, right, bottom) in with_state.texts:
        assert 0 <= left < right <= columns and 0 <= top < bottom <= rows, (text, with_state.texts)


@pytest.mark.parametrize("name", ["nodule", "nowin"])
def test_gsps_box_is_the_detectors_box_on_the_nodule(
    name: str, cases: dict[str, Case], rendered: dict[str, tuple[Rendering, Rendering]], renderings: Path
) -> None:
    """DCMTK's polyline is the detector's box, the SR's SCOORD and the planted nodule's place; in DCMTK's own
    rendering the nodule is inside it (brighter than the ring around it); the box's label sits on top of it.
    Given another image, DCMTK applies none of the GSPS's annotations (they reference this image only)."""
    case = cases[name]
    with_state, _ = rendered[name]
    [region] = case.boxes
    [line] = with_state.polylines
    np.testing.assert_allclose(line, _corners(region), atol=1e-3)
    bounds = (region.x_min, region.y_min, region.x_max, region.y_max)
    assert any(np.allclose(bounds, box, atol=1e-3) for box in _sr_boxes(case.sr)), _sr_boxes(case.sr)
    [truth] = case.truth
    assert _iou(bounds, truth) >= 0.5, (bounds, truth)

    (left, top), (right, bottom) = np.rint(with_state.to_bitmap(line[[0, 2]])).astype(int)
    pixels = with_state.pixels.astype(float)
    inside = pixels[top:bottom, left:right]
    pad = max(right - left, bottom - top) // 2
    around = pixels[top - pad : bottom + pad, left - pad : right + pad].copy()
    around[pad:-pad, pad:-pad] = np.nan
    assert inside.mean() - np.nanmean(around) > 25, (inside.mean(), np.nanmean(around))

    [(label, label_box)] = [(t, b) for t, b in with_state.texts if not t.startswith("AI: ")]
    assert label.startswith("Nodule ")
    assert label_box[0] == pytest.approx(region.x_min, abs=1e-3) and label_box[3] == pytest.approx(
        region.y_min, abs=1e-3
    )

    other = dcmp2pgm(cases["normal"].source_path, renderings / "pgm" / f"{name}-on-normal.pgm", case.gsps[0])
    assert other.polylines == [] and other.texts == []


@pytest.mark.parametrize("name", ["normal", "rg1"])
def test_gsps_without_a_box_holds_only_the_caption(name: str, rendered: dict[str, tuple[Rendering, Rendering]]) -> None:
    """No box found: DCMTK reads no graphic in the GSPS, only the caption; the bitmap is the plain image."""
    with_state, plain = rendered[name]
    assert with_state.polylines == []
    assert [t for t, _ in with_state.texts if not t.startswith("AI: ")] == []
    assert np.array_equal(with_state.pixels, plain.pixels)


def _is_box_colour(rgb: np.ndarray) -> np.ndarray:
    return np.all(np.abs(rgb.astype(int) - BOX_COLOUR) <= 40, axis=-1)


def _banner(rgb: np.ndarray) -> tuple[int, int]:
    """Bottom and right edges of the banner: the black block from the top-left corner (the writer fills it black
    and writes inside it, leaving a margin), measured along the first row and the first column."""
    black = np.all(rgb == 0, axis=-1)
    first_row, first_column = black[0], black[:, 0]
    right = int(np.argmin(first_row)) if not first_row.all() else len(first_row)
    bottom = int(np.argmin(first_column)) if not first_column.all() else len(first_column)
    return bottom, right


@pytest.mark.parametrize("name", ["nodule", "normal", "rg1"])
def test_secondary_capture_is_the_source_with_the_box_and_banner_burned_in(
    name: str, cases: dict[str, Case], rendered: dict[str, tuple[Rendering, Rendering]], renderings: Path
) -> None:
    """dcm2pnm renders the capture: the box's colour lies along each edge of the detector's box and nowhere in
    the source's rendering; the banner in the top-left corner holds white text on black; every other pixel is
    the source as DCMTK renders it (its window; MONOCHROME1 inverted), within one grey level."""
    case = cases[name]
    _, plain = rendered[name]
    [sc_path] = case.sc
    rgb = dcm2pnm(sc_path, renderings / "pgm" / f"{name}-sc.ppm")
    Image.fromarray(rgb).save(renderings / f"{name}-sc-dcm2pnm.png")
    rows, columns = plain.pixels.shape
    assert rgb.shape == (rows, columns, 3)
    scale = np.array([rgb.shape[1] / int(case.source.Columns), rgb.shape[0] / int(case.source.Rows)])
    coloured = _is_box_colour(rgb)
    assert not _is_box_colour(np.repeat(plain.pixels[..., None], 3, axis=-1)).any()

    allowed = np.zeros((rows, columns), dtype=bool)  # where the writer may draw: the boxes and their labels
    for region in case.boxes:
        (left, top), (right, bottom) = np.rint(_corners(region)[[0, 2]] * scale).astype(int)
        for edge in (
            coloured[top, left:right],
            coloured[bottom, left:right],
            coloured[top:bottom, left],
            coloured[top:bottom, right],
        ):
            assert edge.mean() >= 0.9, f"{name}: the burned-in box is not along the detector's box {region}"
        label_height = max(12, rows // 45) * 2
        allowed[max(0, top - label_height) : bottom + 4, max(0, left - 4) : right + 4] = True
        allowed[max(0, top - label_height) : top, left:columns] = True
    assert coloured.any() == bool(case.boxes)
    assert not (coloured & ~allowed).any(), f"{name}: box colour outside the boxes and their labels"

    grey = rgb[..., 0]
    assert (grey == rgb[..., 1]).all() or case.boxes, f"{name}: colour in a capture without a box"
    bottom, right = _banner(rgb)
    assert 0 < bottom < rows // 6 and 0 < right <= columns, (bottom, right)
    banner = rgb[:bottom, :right]
    white = np.all(banner >= 200, axis=-1).mean()  # the text, anti-aliased
    black = np.all(banner == 0, axis=-1).mean()
    assert 0.005 < white < 0.4 and black > 0.5, f"{name}: banner {bottom}x{right} white {white:.3f} black {black:.3f}"
    allowed[:bottom, :right] = True
    difference = np.abs(grey.astype(int) - plain.pixels.astype(int))
    assert difference[~allowed].max() <= 1, f"{name}: the capture departs from the source's rendering"
