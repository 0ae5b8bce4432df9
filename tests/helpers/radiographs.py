"""Chest radiographs for tests: a real CR from pydicom-data and DX built from PNGs.

``RG1_UNCR.dcm`` (David Clunie's compressed-samples set, shipped by the
``pydicom-data`` package) is a real frontal (PA) chest CR. The shared
``cxr-view`` folder holds real frontal and lateral chest PNGs; the builders
here wrap one in a Digital X-Ray Image Storage - For Presentation object
(PS3.3 A.26, DX IOD) that dciodvfy accepts, in a new study of the same
patient as ``RG1_UNCR.dcm`` unless told otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from training.phantoms.dicom import DX_FOR_PRESENTATION, dx_for_presentation

__all__ = [
    "DX_FOR_PRESENTATION",
    "PATIENT_MODULE_KEYWORDS",
    "cxr_view_dir",
    "frontal_radiograph_from_png",
    "lateral_radiograph",
    "radiograph_from_png",
    "repo_root",
    "rg1_uncr_path",
]


PATIENT_MODULE_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
"""The Patient Module attributes (PS3.3 C.7.1.1) copied into built images."""


def repo_root() -> Path:
    """Return the repository root (the folder holding ``pyproject.toml``)."""
    return Path(__file__).resolve().parents[2]


_BITS_STORED = 12


def rg1_uncr_path() -> Path:
    """Return the path of ``RG1_UNCR.dcm``, a real PA chest CR (1955×1841, 15 bits).

    It comes from the installed ``pydicom-data`` package; no network is used.

    Raises
    ------
    FileNotFoundError
        When ``pydicom-data`` is not installed (it is in the ``test`` extra).
    """
    from pydicom.data import get_testdata_file

    found = get_testdata_file("RG1_UNCR.dcm", download=False)
    if found is None:
        raise FileNotFoundError("RG1_UNCR.dcm not found: install the 'pydicom-data' package (test extra)")
    return Path(str(found))


def cxr_view_dir() -> Path:
    """Return the shared ``cxr-view`` folder with ``frontal/`` and ``lateral/`` PNGs.

    ``AINODE_SHARED_DATA`` may name the shared data folder (holding
    ``cxr-view``) or the ``cxr-view`` folder itself; otherwise the folder is
    ``<repo>/../shared/data/cxr-view``.

    Raises
    ------
    FileNotFoundError
        Naming the places searched.
    """
    candidates = []
    override = os.environ.get("AINODE_SHARED_DATA")
    if override:
        candidates += [Path(override), Path(override) / "cxr-view"]
    candidates.append(repo_root().parent / "shared" / "data" / "cxr-view")
    for candidate in candidates:
        if (candidate / "lateral").is_dir() and (candidate / "frontal").is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no cxr-view folder with frontal/ and lateral/ PNGs; tried {tried}")


def _holdout_names() -> list[str]:
    holdout = repo_root() / "weights" / "cxr-view-filter" / "holdout.txt"
    if not holdout.is_file():
        return []
    names = []
    for line in holdout.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().split(",")[0].strip()
        if entry:
            names.append(Path(entry).name)
    return names


def _pick_png(view_folder: str) -> Path:
    """Prefer a PNG held out from view-filter training, else the first one."""
    folder = cxr_view_dir() / view_folder
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise FileNotFoundError(f"no PNG in {folder}")
    by_name = {p.name: p for p in pngs}
    for name in _holdout_names():
        if name in by_name:
            return by_name[name]
    return pngs[0]


def _patient_module(patient: Dataset | Mapping[str, str] | str | os.PathLike[str] | None) -> dict[str, str]:
    if patient is None:
        patient = rg1_uncr_path()
    if isinstance(patient, (str, os.PathLike)):
        from pydicom import dcmread

        patient = dcmread(patient, stop_before_pixels=True)
    if isinstance(patient, Dataset):
        return {kw: str(patient.get(kw, "")) for kw in PATIENT_MODULE_KEYWORDS}
    return {kw: str(patient.get(kw, "")) for kw in PATIENT_MODULE_KEYWORDS}


def radiograph_from_png(
    png: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    view_position: str,
    *,
    patient: Dataset | Mapping[str, str] | str | os.PathLike[str] | None = None,
    study_uid: str | None = None,
) -> Path:
    """Write a DX For Presentation image (PS3.3 A.26) built from a grey PNG.

    The 8-bit PNG values are scaled to 12 bits stored in 16 allocated
    (``value * 16``), MONOCHROME2, with a window covering the full range.

    Parameters
    ----------
    png : path
        A greyscale (or RGB, converted to grey) PNG.
    out_path : path
        Where to write the DICOM Part 10 file.
    view_position : str
        View Position (0018,5101), e.g. ``"PA"``, ``"AP"``, ``"LL"``.
    patient : Dataset, mapping, path or None
        Source of the Patient Module attributes; by default ``RG1_UNCR.dcm``.
    study_uid : str, optional
        Study Instance UID; a new one by default.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
    pixels = grey * np.uint16(1 << (_BITS_STORED - 8))
    spacing = round(430.0 / max(pixels.shape), 4)  # a 43 cm detector, as for an adult chest
    ds = dx_for_presentation(
        pixels,
        view_position=view_position,
        patient=_patient_module(patient),
        study_uid=study_uid,
        study_description="CHEST",
        manufacturer="ainode tests",
        derivation_description=f"Converted from PNG {Path(png).name}",
        imager_pixel_spacing=str(spacing),
        bits_stored=_BITS_STORED,
    )
    out = Path(out_path)
    ds.save_as(out, enforce_file_format=True)
    return out


def lateral_radiograph(
    tmp_path: str | os.PathLike[str],
    png: str | os.PathLike[str] | None = None,
    *,
    patient: Dataset | Mapping[str, str] | str | os.PathLike[str] | None = None,
    study_uid: str | None = None,
) -> Path:
    """Write a left lateral (View Position ``LL``) chest DX built from a real PNG.

    Parameters
    ----------
    tmp_path : path
        Folder for the file (``lateral.dcm``, or a numbered name if taken).
    png : path, optional
        The PNG; by default a lateral PNG listed in
        ``weights/cxr-view-filter/holdout.txt`` (not used for training), else
        the first of ``cxr-view/lateral/``.
    patient, study_uid
        As for :func:`radiograph_from_png`.
    """
    source = Path(png) if png is not None else _pick_png("lateral")
    return radiograph_from_png(source, _free_name(tmp_path, "lateral"), "LL", patient=patient, study_uid=study_uid)


def frontal_radiograph_from_png(
    tmp_path: str | os.PathLike[str],
    png: str | os.PathLike[str] | None = None,
    *,
    view_position: str = "PA",
    patient: Dataset | Mapping[str, str] | str | os.PathLike[str] | None = None,
    study_uid: str | None = None,
) -> Path:
    """Write a frontal chest DX (View Position ``PA`` by default) built from a real PNG.

    Parameters
    ----------
    tmp_path : path
        Folder for the file (``frontal.dcm``, or a numbered name if taken).
    png : path, optional
        The PNG; by default a frontal PNG listed in the view filter's
        holdout list, else the first of ``cxr-view/frontal/``.
    view_position : str
        ``"PA"`` or ``"AP"``.
    patient, study_uid
        As for :func:`radiograph_from_png`.
    """
    if view_position not in ("PA", "AP"):
        raise ValueError(f"a frontal View Position is 'PA' or 'AP', got {view_position!r}")
    source = Path(png) if png is not None else _pick_png("frontal")
    return radiograph_from_png(
        source, _free_name(tmp_path, "frontal"), view_position, patient=patient, study_uid=study_uid
    )


def _free_name(folder: str | os.PathLike[str], stem: str) -> Path:
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    candidate, n = base / f"{stem}.dcm", 1
    while candidate.exists():
        n += 1
        candidate = base / f"{stem}-{n}.dcm"
    return candidate


def radiograph_copies(source: str | os.PathLike[str], folder: str | os.PathLike[str], count: int) -> list[Path]:
    """``count`` copies of a radiograph, each its own study (new UIDs), as a modality would send them."""
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    paths = []
    for i in range(count):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"cr{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
