"""Synthetic images with ground truth, for demo weights and tests (no patient data)."""

from training.phantoms.chest import FINDINGS, FOUR_CLASSES, NIH_LABELS, ChestPhantom, FindingBox, chest_phantom
from training.phantoms.dicom import phantom_dataset

__all__ = ["FINDINGS", "FOUR_CLASSES", "NIH_LABELS", "ChestPhantom", "FindingBox", "chest_phantom", "phantom_dataset"]
