"""A chest phantom as a Digital X-Ray Image Storage - For Presentation dataset (PS3.3 A.26)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from training.phantoms.chest import ChestPhantom

__all__ = [
    "GENERATOR_VERSION",
    "DX_FOR_PRESENTATION",
    "ORIENTATION",
    "VIEW_CODES",
    "dx_for_presentation",
    "phantom_dataset",
]

GENERATOR_VERSION = 1
"""Version of what this module writes (the DX For Presentation datasets made from chest phantoms): bump it
when a change alters the output for the same arguments, so that the demo recipes built on it are rebuilt
(``training.demo.recipe_hash``)."""

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
"""Digital X-Ray Image Storage - For Presentation (PS3.4 B.5)."""

_BITS_STORED = 12


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def phantom_dataset(
    phantom: ChestPhantom,
    *,
    patient_id: str | None = None,
    patient_name: str = "PHANTOM^CHEST",
    study_uid: str | None = None,
) -> Dataset:
    """Wrap a phantom in a DX For Presentation image (PS3.3 A.26), PA view.

    Pixels are 12 bits stored in 16 allocated, MONOCHROME2, with a window over
    the full range. Imager Pixel Spacing and Pixel Spacing (PS3.3 C.8.11.4, 10.7.1)
    are the phantom's spacing (no magnification correction: the values are equal).
    Image Type is DERIVED and the derivation description says it is synthetic.

    Parameters
    ----------
    phantom : ChestPhantom
        From :func:`training.phantoms.chest_phantom`.
    patient_id : str, optional
        Patient ID (0010,0020); ``PHANTOM-<seed>`` by default.
    patient_name : str
        Patient's Name (0010,0010).
    study_uid : str, optional
        Study Instance UID; a new one by default.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian), ready for ``save_as``.
    """
    pixels = np.round(np.clip(phantom.image, 0.0, 1.0) * ((1 << _BITS_STORED) - 1)).astype(np.uint16)
    spacing = f"{phantom.pixel_spacing_mm:.6g}"
    return dx_for_presentation(
        pixels,
        view_position="PA",
        patient={
            "PatientName": patient_name,
            "PatientID": patient_id or f"PHANTOM-{phantom.seed}",
            "PatientBirthDate": "",
            "PatientSex": "O",
        },
        study_uid=study_uid,
        study_description="CHEST PHANTOM",
        manufacturer="ainode synthetic phantom",
        derivation_description=f"Synthetic chest phantom, seed {phantom.seed}: {phantom.label_string}",
        imager_pixel_spacing=spacing,
        calibrated_pixel_spacing=spacing,
    )


#: Patient Orientation (PS3.3 C.7.6.1.1.1) per View Position, as a reader sees the image: a PA view
#: shows the patient's left on the right; a left lateral (left side on the detector) faces left.
ORIENTATION = {"PA": ["L", "F"], "AP": ["R", "F"], "LL": ["P", "F"], "RL": ["A", "F"]}
#: View Code Sequence values from PS3.16 CID 4010 "DX View".
VIEW_CODES = {
    "PA": codes.SCT.PosteroAnterior,
    "AP": codes.SCT.AnteroPosterior,
    "LL": codes.SCT.LeftLateral,
    "RL": codes.SCT.RightLateral,
}


def dx_for_presentation(
    pixels: np.ndarray,
    *,
    view_position: str,
    patient: Mapping[str, str],
    study_uid: str | None,
    study_description: str,
    manufacturer: str,
    derivation_description: str,
    imager_pixel_spacing: str,
    calibrated_pixel_spacing: str | None = None,
    bits_stored: int = _BITS_STORED,
) -> Dataset:
    """A chest DX For Presentation image (PS3.3 A.26) around unsigned ``pixels`` (rows, columns).

    Used for phantoms and for the test suite's images converted from PNG, so both
    pass dciodvfy the same way. ``calibrated_pixel_spacing`` adds Pixel Spacing with
    calibration type GEOMETRY (PS3.3 10.7.1); without it only Imager Pixel Spacing is set.
    """
    if view_position not in ORIENTATION:
        raise ValueError(f"View Position must be one of {sorted(ORIENTATION)}, got {view_position!r}")
    rows, columns = pixels.shape
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    # Patient (C.7.1.1)
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    # General Series (C.7.3.1) and DX Series (C.8.11.1)
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    # General Equipment (C.7.5.1)
    ds.Manufacturer = manufacturer
    # General Image (C.7.6.1), DX Image (C.8.11.3), Image Pixel (C.7.6.3)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = derivation_description[:1024]
    ds.PatientOrientation = ORIENTATION[view_position]
    ds.ImageLaterality = "U"  # the chest is not a paired structure
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = (1 << bits_stored) // 2
    ds.WindowWidth = 1 << bits_stored
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    # DX Anatomy Imaged (C.8.11.2): Chest, PS3.16 CID 4009
    ds.AnatomicRegionSequence = DicomSequence([_code(codes.SCT.Chest)])
    # DX Detector (C.8.11.4) and DX Positioning (C.8.11.5)
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [imager_pixel_spacing, imager_pixel_spacing]
    if calibrated_pixel_spacing is not None:
        ds.PixelSpacing = [calibrated_pixel_spacing, calibrated_pixel_spacing]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Synthetic image: spacing at the detector plane"
    ds.PositionerType = ""  # type 2: unknown
    ds.ViewPosition = view_position
    ds.ViewCodeSequence = DicomSequence([_code(VIEW_CODES[view_position])])
    # Acquisition Context (C.7.6.14): required, may be empty
    ds.AcquisitionContextSequence = DicomSequence([])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
