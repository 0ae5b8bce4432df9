"""``ainode sample``: a small synthetic study for each pipeline, written to a folder and optionally sent.

The studies come from the phantom writers of :mod:`training.phantoms` (synthetic
anatomy with planted findings, no patient data); nothing of the training code,
TensorFlow or torch is imported. Each is made so that the shipped routing
rules send it to its pipeline:

``cxr``
    one PA chest radiograph (DX For Presentation, 512²) with a pleural effusion;
``ct-pe``
    a CT pulmonary angiography series (60 axial slices of 256², 4 mm) with a
    clot in the right pulmonary artery;
``ct-lumbar``
    a contrast-enhanced abdomen-pelvis CT (60 axial slices of 256², 5 mm).

``--send AE@HOST:PORT`` sends the files with the node's own C-STORE SCU
(:func:`dimse.scu.store_files`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError, NodeError

__all__ = ["KINDS", "SampleStudy", "parse_address", "write_sample"]

_ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class SampleStudy:
    """What :func:`write_sample` wrote."""

    kind: str
    pipeline: str
    description: str
    study_uid: str
    paths: list[Path]


def _cxr(out: Path, seed: int) -> tuple[str, list[Path]]:
    from training.phantoms import chest_phantom, phantom_dataset

    ds = phantom_dataset(
        chest_phantom(seed, ["effusion"], size=512), patient_id=f"SAMPLE-CXR-{seed}", patient_name="SAMPLE^CHEST"
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "CXR00001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), [path]


def _ct(kind: str) -> Callable[[Path, int], tuple[str, list[Path]]]:
    def write(out: Path, seed: int) -> tuple[str, list[Path]]:
        from training.phantoms.ct import abdomen_phantom, ctpa_phantom, write_ct_series

        if kind == "ct-pe":
            phantom = ctpa_phantom(seed, slices=60, size=256, embolus="right")
        else:
            phantom = abdomen_phantom(seed, slices=60, size=256, spacing_z=5.0)
        paths = write_ct_series(
            phantom,
            out,
            patient_id=f"SAMPLE-{kind.upper()}-{seed}",
            patient_name=f"SAMPLE^{kind.upper()}",
            file_names="ordered",
        )
        return str(phantom.truth["study_uid"]), paths

    return write


#: kind -> (pipeline the shipped routing sends it to, description, writer)
KINDS: dict[str, tuple[str, str, Callable[[Path, int], tuple[str, list[Path]]]]] = {
    "cxr": ("cxr", "chest radiograph, PA, pleural effusion (synthetic)", _cxr),
    "ct-pe": (
        "ct_pe",
        "CT pulmonary angiography, 60 slices, clot in the right pulmonary artery (synthetic)",
        _ct("ct-pe"),
    ),
    "ct-lumbar": ("ct_lumbar", "CT abdomen-pelvis with contrast, 60 slices (synthetic)", _ct("ct-lumbar")),
}


def write_sample(kind: str, out: Path, seed: int = 1) -> SampleStudy:
    """Write the sample study ``kind`` into ``out`` (created); new UIDs every time.

    Raises
    ------
    ConfigError
        Unknown kind.
    NodeError
        ``out`` cannot be written (one line with the reason).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown sample {kind!r}: choose one of {', '.join(KINDS)}")
    pipeline, description, writer = KINDS[kind]
    if out.exists() and not out.is_dir():
        raise NodeError(f"--out {out} is a file: name a folder (it is created if needed)")
    try:
        study_uid, paths = writer(out, seed)
    except OSError as exc:
        raise NodeError(f"cannot write the sample into {out} ({exc.strerror or exc}): name a writable folder") from exc
    return SampleStudy(kind=kind, pipeline=pipeline, description=description, study_uid=study_uid, paths=paths)


def parse_address(text: str) -> tuple[str, str, int]:
    """``"AINODE@127.0.0.1:11112"`` -> ``("AINODE", "127.0.0.1", 11112)``.

    Raises
    ------
    ConfigError
        Not of the form ``AE@HOST:PORT``.
    """
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(
            f"--send {text!r}: expected AE@HOST:PORT, e.g. AINODE@127.0.0.1:11112 or ORTHANC@127.0.0.1:4242"
        )
    return match["ae"], match["host"].strip("[]"), port
