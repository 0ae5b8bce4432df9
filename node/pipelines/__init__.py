"""Pipelines: load a series, run its models, turn results into DICOM objects.

A pipeline is built once per worker (models loaded once, not per study; see
:mod:`node.pipelines.registry`) and then called for each job. It returns the plain :class:`SeriesResult` and the
result data sets; the executor makes them durable and queues deliveries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom
import pydicom.encaps
from pydicom import Dataset

from core.findings import SeriesResult

if TYPE_CHECKING:
    from node.settings import Settings

# pydicom logs each failed decoder plugin at ERROR with its traceback; the job's error already says,
# in one line per plugin, why the pixel data could not be decoded (and users must not see tracebacks).
logging.getLogger("pydicom.pixels").setLevel(logging.CRITICAL)

log = logging.getLogger("ainode.pipeline")


@dataclass
class PipelineOutput:
    """What one analysis produced.

    Source attributes the writers dropped or corrected because their VR does not allow the source's
    value (:mod:`sr_writer.source_attributes`) are appended to ``summary`` and logged at WARNING, by
    keyword and reason only: "source attributes dropped: PatientAge (invalid AS)".
    """

    result: SeriesResult
    objects: list[Dataset]
    summary: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from sr_writer.source_attributes import describe_issues, source_attribute_issues

        issues = [issue for ds in self.objects for issue in source_attribute_issues(ds)]
        note = describe_issues(issues)
        if note:
            self.summary = f"{self.summary}; {note}" if self.summary else note
            log.warning("%s", note)


class Pipeline(Protocol):
    name: str

    def analyse(
        self, study_uid: str, series_uid: str, paths: Sequence[Path], predecessors: Sequence[Dataset] = ()
    ) -> PipelineOutput:
        """Analyse one series; raise :class:`node.errors.InputError` when it cannot be analysed."""
        ...


#: Most pixels one image may decode to: 2**26 = 8192 × 8192, twice a large detector's 4,300 × 4,300. Above
#: it, an image is refused before decoding: a few kilobytes of JPEG 2000 can claim 65535 × 65535 pixels,
#: and the decoder would allocate gigabytes before finding out the data is not there.
MAX_PIXELS = 1 << 26
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def check_decodable_size(ds: Dataset) -> None:
    """Refuse an image whose pixels, as the header or a compressed code stream says, exceed :data:`MAX_PIXELS`.

    Checks Rows × Columns × Samples per Pixel × Number of Frames (PS3.3
    C.7.6.3), and for encapsulated pixel data (PS3.5 A.4) the size in the
    first frame's own header: the JPEG 2000 SIZ marker (ISO 15444-1 A.5.1)
    or a JPEG SOF marker (ISO 10918-1 B.2.2), which the decoder believes
    rather than the DICOM header.

    Raises
    ------
    InputError
        Naming the sizes, without decoding anything.
    """
    from node.errors import InputError

    def number(keyword: str, default: int) -> int:
        try:
            return int(ds.get(keyword, default) or default)
        except (TypeError, ValueError):
            return default

    rows, columns = number("Rows", 0), number("Columns", 0)
    frames, samples = number("NumberOfFrames", 1), number("SamplesPerPixel", 1)
    if rows * columns * frames * samples > MAX_PIXELS:
        raise InputError(
            f"image of {rows}×{columns} pixels × {samples} sample(s) × {frames} frame(s) is larger "
            f"than the node decodes ({MAX_PIXELS:,} values); not decoded"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in ds:
        return
    try:
        first = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames), b"")
    except (ValueError, TypeError, KeyError, StopIteration):
        return  # not valid encapsulation: the decoder says so itself, without a large allocation
    size = _codestream_size(bytes(first[:65536]))
    if size is not None and size[0] * size[1] * samples > MAX_PIXELS:
        raise InputError(
            f"compressed pixel data claims {size[1]}×{size[0]} pixels (the header says "
            f"{rows}×{columns}); larger than the node decodes ({MAX_PIXELS:,} values); not decoded"
        )


def _codestream_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 SIZ or JPEG SOF marker segment, if one is found."""
    import struct

    siz = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ, also inside a JP2 'jp2c' box
    if siz >= 0 and len(data) >= siz + 24:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[siz + 8 : siz + 24])
        return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0)
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _JPEG_SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


#: Pipelines the node knows, and the models each needs (manifest names): a pipeline whose models are
#: missing is disabled at start-up, with the reason, and the others run.
PIPELINE_MODELS: dict[str, tuple[str, ...]] = {
    "cxr": ("cxr-view-filter",),
    "ct_pe": ("ct-pe",),
    "ct_lumbar": ("ct-lumbar",),
}


def pipeline_models(settings: Settings, pipeline: str) -> list[str]:
    """The models a pipeline runs: those it needs (:data:`PIPELINE_MODELS`), then (cxr) the optional ones configured."""
    names = list(PIPELINE_MODELS.get(pipeline, ()))
    if pipeline == "cxr":
        cxr = settings.cxr
        names += [n for n in (cxr.finding_model, *cxr.four_class_models, cxr.detector_model) if n]
    return list(dict.fromkeys(names))
