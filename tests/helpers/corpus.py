"""A corpus of malformed and unusual DICOM inputs, generated (nothing downloaded), for robustness tests.

Each :class:`CorpusItem` exists in two forms:

- ``data``: the file as it would lie on a disk (what ``ainode analyze`` reads);
- ``wire``: a PS3.10 file whose File Meta Information names the SOP class,
  SOP instance and transfer syntax to put in the C-STORE request, followed by
  the data set bytes to send *as they are*, valid or not. Sent with
  pynetdicom's chunked mode (:func:`send_wire`), those bytes reach the node
  unparsed, which is how a broken modality's would (DCMTK's ``storescu``
  refuses to send most of them).

Every item is built from a small but real chest radiograph (a DX For
Presentation image, PS3.3 A.26, made from a real PNG) in a study and series
of its own, so each is routed to the ``cxr`` pipeline and analysed alone.
``expect`` says what a correct node does with it: ``"sr"`` it must analyse it
(an SR), ``"refused"`` it must refuse it at the door (C-STORE 0xC210, and a
failed row in ``ainode analyze``), ``"any"`` an SR or a clear error.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from .radiographs import DX_FOR_PRESENTATION, cxr_view_dir, radiograph_from_png

Expect = Literal["sr", "refused", "any"]

#: Marks every path-like UID of the corpus: a test searches the disk for it to prove nothing escaped.
ESCAPE_MARKER = "ainode-corpus-escape"


@dataclass
class CorpusItem:
    """One input: its name, what is wrong with it, its two forms and what a correct node does."""

    name: str
    description: str
    data: bytes
    wire: bytes
    sop_instance_uid: str
    series_uid: str | None
    expect: Expect

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write ``files/<name>.dcm`` (the file) and ``wire/<name>.wire`` (the network form) under ``folder``."""
        (folder / "files").mkdir(parents=True, exist_ok=True)
        (folder / "wire").mkdir(parents=True, exist_ok=True)
        data, wire = folder / "files" / f"{self.name}.dcm", folder / "wire" / f"{self.name}.wire"
        data.write_bytes(self.data)
        wire.write_bytes(self.wire)
        return data, wire


# --------------------------------------------------------------------------- encoding helpers


def part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a PS3.10 file in ``syntax`` (preamble, ``DICM``, File Meta Information, data set)."""
    if syntax == ExplicitVRBigEndian:  # pydicom will not switch a read data set's byte order: copy it over
        plain = Dataset()
        for elem in ds:
            plain.add(copy.deepcopy(elem))
        if "PixelData" in plain and ds.BitsAllocated == 16:  # OW values are swapped by the writer of the bytes
            plain.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        ds = plain
    ds.file_meta = _meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_bytes(file: bytes) -> bytes:
    """The data set of a PS3.10 file: what follows the File Meta Information (its group length, PS3.10 7.1)."""
    start = 128 if file[128:132] == b"DICM" else 0  # without the preamble, "DICM" comes first
    assert file[start : start + 4] == b"DICM", "not a PS3.10 file"
    (group_length,) = struct.unpack("<I", file[start + 12 : start + 16])
    return file[start + 16 + group_length :]


def _meta(sop_class: str, sop_instance: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def wrap(
    data_set: bytes, sop_instance: str, syntax: str = ExplicitVRLittleEndian, sop_class: str = DX_FOR_PRESENTATION
) -> bytes:
    """A PS3.10 file around arbitrary ``data_set`` bytes: the network form of any input."""
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, _meta(sop_class, sop_instance, syntax), enforce_standard=True)
    return buffer.getvalue() + data_set


def _base(folder: Path, size: int = 128) -> Dataset:
    png = sorted((cxr_view_dir() / "frontal").glob("*.png"))[0]
    small = folder / "corpus-base.png"
    folder.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("L").resize((size, size)).save(small)
    return pydicom.dcmread(radiograph_from_png(small, folder / "corpus-base.dcm", "PA"))


# --------------------------------------------------------------------------- the corpus


class _Builder:
    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.items: list[CorpusItem] = []

    def fresh(self) -> Dataset:
        """A deep copy of the base image in a new study and series, with a new SOP Instance UID."""
        ds = copy.deepcopy(self.base)  # Dataset.copy() is shallow: copies would share their UIDs
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        return ds

    def dataset(
        self,
        name: str,
        description: str,
        change: Callable[[Dataset], None] | None = None,
        syntax: str = ExplicitVRLittleEndian,
        expect: Expect = "any",
    ) -> None:
        """An item that is a (possibly odd) data set pydicom can write: the file and the wire share it."""
        ds = self.fresh()
        if change is not None:
            change(ds)
        file = part10(ds, syntax)
        self.items.append(
            CorpusItem(name, description, file, file, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), expect)
        )

    def raw(
        self,
        name: str,
        description: str,
        data: bytes,
        wire_set: bytes | None = None,
        syntax: str = ExplicitVRLittleEndian,
        series_uid: str | None = None,
        expect: Expect = "any",
        sop_uid: str | None = None,
    ) -> None:
        """An item given as bytes: ``data`` on disk; ``wire_set`` (default ``data``) sent as the data set."""
        uid = sop_uid or generate_uid()
        self.items.append(
            CorpusItem(
                name,
                description,
                data,
                wrap(data if wire_set is None else wire_set, uid, syntax),
                uid,
                series_uid,
                expect,
            )
        )

    def mutated(
        self,
        name: str,
        description: str,
        mutate: Callable[[bytes], bytes],
        expect: Expect = "any",
        change: Callable[[Dataset], None] | None = None,
        syntax: str = ExplicitVRLittleEndian,
    ) -> None:
        """A valid file whose bytes are then damaged; the wire carries the same damaged data set."""
        ds = self.fresh()
        if change is not None:
            change(ds)
        file = mutate(part10(ds, syntax))
        self.items.append(
            CorpusItem(
                name,
                description,
                file,
                wrap(dataset_bytes(file), str(ds.SOPInstanceUID), syntax),
                str(ds.SOPInstanceUID),
                str(ds.SeriesInstanceUID),
                expect,
            )
        )


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)

    return change


def _encapsulated(fragment: bytes, **values: object) -> Callable[[Dataset], None]:
    from pydicom.encaps import encapsulate

    def change(ds: Dataset) -> None:
        _set(**values)(ds)
        ds.PixelData = encapsulate([fragment])
        ds["PixelData"].VR = "OB"

    return change


def _j2k(pixels: np.ndarray) -> bytes:
    import openjpeg

    return bytes(openjpeg.encode(pixels, codec_format=0))


def _j2k_bomb() -> bytes:
    """A valid JPEG 2000 code stream of 128×128 whose SIZ marker (ISO 15444-1 A.5.1) claims 65535×65535 in one tile."""
    stream = bytearray(_j2k((np.arange(128 * 128).reshape(128, 128) % 251).astype(np.uint8)))
    siz = stream.find(b"\xff\x51")
    struct.pack_into(">IIIIII", stream, siz + 6, 65535, 65535, 0, 0, 65535, 65535)
    return bytes(stream)


def _jpeg_bomb(jpeg: bytes) -> bytes:
    """A JPEG whose SOF0 frame header (ISO 10918-1 B.2.2) claims 65535×65535 pixels."""
    stream = bytearray(jpeg)
    sof = stream.find(b"\xff\xc0")
    struct.pack_into(">HH", stream, sof + 5, 65535, 65535)
    return bytes(stream)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _charset(charset: str, name: str, description: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.StudyDescription = description

    return change


def _rgb(ds: Dataset) -> None:
    grey = ds.pixel_array.astype(np.uint16) >> 4
    rgb = np.stack([grey, grey, grey], axis=-1).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        delattr(ds, keyword)


def _palette(ds: Dataset) -> None:
    index = (ds.pixel_array >> 4).astype(np.uint8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = index.tobytes()
    ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"  # ambiguous US/SS in PS3.6
        setattr(ds, f"{colour}PaletteColorLookupTableData", ramp)
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        delattr(ds, keyword)


def _multiframe(ds: Dataset) -> None:
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3


def _signed(ds: Dataset) -> None:
    """The same image stored as signed values around 0; the Rescale Intercept restores them (PS3.3 C.11.1.1.2)."""
    pixels = ds.pixel_array.astype(np.int16) - 2048
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.tobytes()
    ds.RescaleIntercept = 2048


def _monochrome1(ds: Dataset) -> None:
    """The same image as MONOCHROME1: inverted values, so that it displays the same (PS3.3 C.7.6.3.1.2)."""
    ds.PixelData = ((1 << ds.BitsStored) - 1 - ds.pixel_array.astype(np.uint16)).astype(np.uint16).tobytes()
    ds.PhotometricInterpretation, ds.PresentationLUTShape = "MONOCHROME1", "INVERSE"


def _float_pixels(ds: Dataset) -> None:
    ds.FloatPixelData = ds.pixel_array.astype(np.float32).tobytes()
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31


def _no_preamble(file: bytes) -> bytes:
    return file[128:]  # "DICM", File Meta Information and data set, without the 128-byte preamble


def _bad_length(file: bytes) -> bytes:
    """Patient Name's 16-bit value length (PS3.5 7.1.2) set to 0xFFF0: it swallows the data set."""
    at = file.find(b"\x10\x00\x10\x00PN")
    return file[: at + 6] + struct.pack("<H", 0xFFF0) + file[at + 8 :]


def _huge_length(file: bytes) -> bytes:
    """Pixel Data's 32-bit value length set to 0xFFFFFFF0 (about 4 GB) with a few kB behind it."""
    at = file.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    return file[: at + 8] + struct.pack("<I", 0xFFFFFFF0) + file[at + 12 :]


def _unclosed_sequence(file: bytes) -> bytes:
    """Cut inside an undefined-length sequence item: no item or sequence delimiter ever comes."""
    at = file.find(b"\x08\x00\x18\x22SQ")  # Anatomic Region Sequence
    return file[: at + 40]


def build_corpus(folder: Path) -> list[CorpusItem]:
    """Generate the corpus (about 45 inputs); ``folder`` receives the base image it is made from."""
    b = _Builder(_base(folder))
    rng = np.random.default_rng(5)
    marker = ESCAPE_MARKER
    good = part10(b.fresh())

    # Not DICOM at all, or cut short.
    b.raw("empty", "an empty file", b"", expect="refused")
    b.raw("random-1k", "1 kB of random bytes", rng.bytes(1024), expect="refused")
    b.raw(
        "random-with-dicm",
        "a preamble and DICM, then random bytes",
        b"\0" * 128 + b"DICM" + rng.bytes(2048),
        wire_set=rng.bytes(2048),
        expect="refused",
    )
    b.raw("text-file", "a text file", b"Patient report\nnothing to see\n" * 40, expect="refused")
    b.raw("truncated-meta", "cut inside the File Meta Information", good[:150], wire_set=b"", expect="refused")
    b.mutated("truncated-header", "cut in the middle of the data set header", lambda f: f[:600], expect="any")
    b.mutated("truncated-pixels", "cut in the middle of the pixel data", lambda f: f[: len(f) - len(f) // 3])
    b.mutated("unclosed-sequence", "cut inside an undefined-length sequence", _unclosed_sequence)
    b.mutated("bad-element-length", "an element length pointing far past its value", _bad_length)
    b.mutated("huge-pixel-length", "Pixel Data length 0xFFFFFFF0 with a few kB of data", _huge_length)

    # Pixel data that does not match its description.
    b.dataset("no-pixel-data", "no Pixel Data at all", _set(PixelData=None))
    b.dataset("rows-columns-too-big", "Rows/Columns larger than the pixel data", _set(Rows=512, Columns=512))
    b.dataset("rows-columns-too-small", "Rows/Columns smaller than the pixel data", _set(Rows=64, Columns=64))
    b.dataset("rows-zero", "Rows = 0", _set(Rows=0))
    b.dataset("bits-allocated-12", "Bits Allocated 12 (invalid for uncompressed data)", _set(BitsAllocated=12))
    b.dataset("bits-stored-zero", "Bits Stored 0", _set(BitsStored=0, HighBit=0))
    b.dataset("bits-stored-over-allocated", "Bits Stored 20 of 16 allocated", _set(BitsStored=20, HighBit=19))
    b.dataset("bits-allocated-1", "Bits Allocated 1 over 16-bit data", _set(BitsAllocated=1, BitsStored=1, HighBit=0))
    b.dataset("samples-per-pixel-4", "4 samples per pixel on grey data", _set(SamplesPerPixel=4, PlanarConfiguration=0))
    b.dataset("absurd-dimensions", "Rows = Columns = 65535 with 32 kB of pixel data", _set(Rows=65535, Columns=65535))
    b.dataset("absurd-frames", "a million frames declared, one present", _set(NumberOfFrames=1_000_000))
    b.dataset("float-pixel-data", "Float Pixel Data instead of Pixel Data", _float_pixels)

    # Compressed pixel data that is damaged or lies about its size.
    grey8 = (rng.integers(0, 255, size=(128, 128))).astype(np.uint8)
    good_jpeg = _jpeg(grey8)
    jpeg_attrs = dict(BitsAllocated=8, BitsStored=8, HighBit=7, WindowCenter=128, WindowWidth=256)
    b.dataset(
        "jpeg-corrupt",
        "JPEG baseline whose entropy-coded data is random",
        _encapsulated(good_jpeg[:300] + rng.bytes(len(good_jpeg) - 300), **jpeg_attrs),
        syntax=JPEGBaseline8Bit,
    )
    b.dataset(
        "jpeg-truncated",
        "JPEG baseline cut after its headers",
        _encapsulated(good_jpeg[:200], **jpeg_attrs),
        syntax=JPEGBaseline8Bit,
    )
    b.dataset(
        "jpeg-not-jpeg",
        "a JPEG transfer syntax over random bytes",
        _encapsulated(rng.bytes(4000), **jpeg_attrs),
        syntax=JPEGBaseline8Bit,
    )
    j2k = _j2k(grey8)
    b.dataset(
        "j2k-corrupt",
        "JPEG 2000 whose code blocks are random",
        _encapsulated(j2k[:120] + rng.bytes(len(j2k) - 120), **jpeg_attrs),
        syntax=JPEG2000Lossless,
    )
    b.dataset(
        "j2k-bomb",
        "JPEG 2000 claiming 65535×65535 (Rows/Columns agree) in 3 kB: a decompression bomb",
        _encapsulated(_j2k_bomb(), **{**jpeg_attrs, "Rows": 65535, "Columns": 65535}),
        syntax=JPEG2000Lossless,
    )
    b.dataset(
        "j2k-bomb-hidden",
        "JPEG 2000 claiming 65535×65535 where Rows/Columns say 128×128",
        _encapsulated(_j2k_bomb(), **jpeg_attrs),
        syntax=JPEG2000Lossless,
    )
    b.dataset(
        "jpeg-bomb-hidden",
        "JPEG baseline whose SOF claims 65535×65535 where Rows/Columns say 128×128",
        _encapsulated(_jpeg_bomb(good_jpeg), **jpeg_attrs),
        syntax=JPEGBaseline8Bit,
    )
    b.dataset(
        "j2k-size-mismatch",
        "JPEG 2000 of 128×128 where the header says 1024×1024",
        _encapsulated(j2k, **{**jpeg_attrs, "Rows": 1024, "Columns": 1024}),
        syntax=JPEG2000Lossless,
    )

    # UIDs that are too long or try to name a path.
    b.dataset(
        "uid-too-long",
        "a Study Instance UID of 70 characters",
        _set(StudyInstanceUID="1.2." + "3" * 66),
        expect="refused",
    )
    b.dataset(
        "uid-dot-dot-study",
        "Study Instance UID '../../..'",
        _set(StudyInstanceUID=f"../../../../{marker}"),
        expect="refused",
    )
    b.dataset(
        "uid-absolute-series",
        "an absolute path as Series Instance UID",
        _set(SeriesInstanceUID=f"/tmp/{marker}"),
        expect="refused",
    )
    b.dataset(
        "uid-letters", "letters in the Series Instance UID", _set(SeriesInstanceUID="1.2.abc.4"), expect="refused"
    )
    b.dataset("uid-missing-study", "no Study Instance UID", _set(StudyInstanceUID=None), expect="refused")
    sop = f"../../{marker}"
    escape = b.fresh()
    escape.SOPInstanceUID = sop
    b.raw(
        "uid-dot-dot-sop",
        "'../' in the SOP Instance UID, in the data set and the request",
        part10(escape),
        wire_set=dataset_bytes(part10(escape)),
        sop_uid=sop,
        series_uid=str(escape.SeriesInstanceUID),
        expect="refused",
    )

    # Character sets (PS3.5 6.1): each must work.
    b.dataset(
        "charset-korean",
        "ISO 2022 IR 149 (Korean)",
        _charset("\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동", "흉부 CHEST"),
        expect="sr",
    )
    b.dataset(
        "charset-japanese",
        "ISO 2022 IR 87 (Japanese kanji)",
        _charset("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", "胸部 CHEST"),
        expect="sr",
    )
    b.dataset(
        "charset-utf8", "ISO_IR 192 (UTF-8)", _charset("ISO_IR 192", "Müller^Zoë=李^小龍", "Thorax ČHEST"), expect="sr"
    )
    b.dataset(
        "charset-latin1", "ISO_IR 100 (Latin-1)", _charset("ISO_IR 100", "Gérard^Hélène", "Thorax pa"), expect="sr"
    )
    b.dataset(
        "charset-unknown", "an unknown Specific Character Set", _charset("ISO_IR 999", "Doe^John", "CHEST"), expect="sr"
    )

    def latin1_declared_utf8(ds: Dataset) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Gérard"

    b.mutated(
        "charset-invalid-bytes",
        "UTF-8 declared, Latin-1 bytes written",
        lambda f: f.replace("Gérard".encode(), "Gérard ".encode("latin-1")),
        change=latin1_declared_utf8,
        expect="sr",
    )

    # Unusual but valid encodings and images.
    b.dataset("rgb", "an RGB radiograph (3 samples, 8 bits)", _rgb)
    b.dataset("palette", "a PALETTE COLOR radiograph", _palette)
    b.dataset("multiframe", "a multi-frame radiograph (3 frames)", _multiframe)
    b.dataset("monochrome1", "MONOCHROME1 (inverted grey)", _monochrome1, expect="sr")
    b.dataset("signed-pixels", "signed 16-bit pixels with negative values", _signed, expect="sr")
    b.dataset("implicit-vr", "Implicit VR Little Endian", syntax=ImplicitVRLittleEndian, expect="sr")
    b.dataset("big-endian", "Explicit VR Big Endian (retired)", syntax=ExplicitVRBigEndian, expect="sr")
    b.dataset("deflated", "Deflated Explicit VR Little Endian", syntax=DeflatedExplicitVRLittleEndian, expect="sr")
    b.mutated("no-preamble", "no 128-byte preamble (starts with DICM)", _no_preamble, expect="sr")
    bare = b.fresh()
    bare_file = part10(bare, ImplicitVRLittleEndian)
    b.raw(
        "no-meta",
        "a bare Implicit VR data set: no preamble, no DICM, no File Meta Information",
        dataset_bytes(bare_file),
        syntax=ImplicitVRLittleEndian,
        series_uid=str(bare.SeriesInstanceUID),
        sop_uid=str(bare.SOPInstanceUID),
        expect="sr",
    )
    b.dataset(
        "spacing-zero",
        "Pixel Spacing and Imager Pixel Spacing 0\\0",
        _set(PixelSpacing=[0, 0], ImagerPixelSpacing=[0, 0]),
        expect="sr",
    )
    b.dataset(
        "spacing-negative",
        "negative Pixel Spacing",
        _set(PixelSpacing=[-0.2, -0.2], ImagerPixelSpacing=[-0.2, -0.2]),
        expect="sr",
    )
    b.mutated(
        "spacing-garbage",
        "Imager Pixel Spacing 'abc\\def' (not a decimal string)",
        lambda f: f.replace(b"\x18\x00\x64\x11DS\x0e\x003.3594\\3.3594 ", b"\x18\x00\x64\x11DS\x08\x00abc\\def "),
        change=_set(ImagerPixelSpacing=[3.3594, 3.3594]),
    )
    b.dataset("window-garbage", "Window Center/Width of zero width", _set(WindowWidth=0))
    b.dataset("photometric-ybr", "YBR_FULL declared on grey data", _set(PhotometricInterpretation="YBR_FULL"))
    b.dataset("photometric-unknown", "an unknown Photometric Interpretation", _set(PhotometricInterpretation="WEIRD"))
    return b.items


def send_wire(
    port: int, path: Path, called_ae: str = "AINODE", calling_ae: str = "STORESCU", timeout: float = 30
) -> int | None:
    """C-STORE one ``.wire`` file's data set bytes unparsed (pynetdicom's chunked mode); its status, None if none.

    The association proposes exactly the SOP class and transfer syntax of the
    file's meta information. ``-1`` means the node accepted no presentation
    context for them.
    """
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes from the file, never decoded or re-encoded
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not assoc.is_established:
            raise ConnectionError(f"the node refused the association for {path.name}")
        try:
            if not assoc.accepted_contexts:
                return -1
            status = assoc.send_c_store(path)
            return getattr(status, "Status", None)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def echo(port: int, called_ae: str = "AINODE", calling_ae: str = "STORESCU") -> int | None:
    """C-ECHO (PS3.4 A) the node on a new association; the status, None when there was no answer."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        return getattr(assoc.send_c_echo(), "Status", None)
    finally:
        assoc.release()


__all__ = ["ESCAPE_MARKER", "CorpusItem", "build_corpus", "dataset_bytes", "echo", "part10", "send_wire", "wrap"]
