"""storescp association profiles the command line options cannot express.

DCMTK ``storescp``'s ``--prefer-*`` options (``+xs``, ``+xv``...) put a syntax
first but still accept the uncompressed ones. A Storage SCP that accepts only
JPEG lossless -- a real archive's setting, and the case whose delivery failure
used to be worded "SOP class not supported" -- needs an association profile
(``-xf file profile``, the format of DCMTK's ``storescp.cfg``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["JPEG_LOSSLESS_ONLY_CLASSES", "jpeg_lossless_only"]

#: Storage SOP classes (DCMTK's names) the JPEG-lossless-only profile accepts; anything else,
#: MR Image Storage for one, is refused as "abstract syntax not supported".
JPEG_LOSSLESS_ONLY_CLASSES = ("CTImageStorage", "ComputedRadiographyImageStorage", "SecondaryCaptureImageStorage")


def jpeg_lossless_only(folder: Path) -> list[str]:
    """Write a profile accepting only JPEG Lossless (Process 14 SV1) for a few SOP classes.

    Verification stays uncompressed. Returns the ``storescp`` options that select it.
    """
    contexts = ["PresentationContext1 = VerificationSOPClass\\Uncompressed"]
    contexts += [
        f"PresentationContext{index} = {name}\\JPEGLosslessOnly"
        for index, name in enumerate(JPEG_LOSSLESS_ONLY_CLASSES, start=2)
    ]
    text = "\n".join(
        [
            "[[TransferSyntaxes]]",
            "[Uncompressed]",
            "TransferSyntax1 = LocalEndianExplicit",
            "TransferSyntax2 = LittleEndianImplicit",
            "[JPEGLosslessOnly]",
            "TransferSyntax1 = JPEGLossless:Non-hierarchical-1stOrderPrediction",
            "[[PresentationContexts]]",
            "[JPEGLosslessOnlySCP]",
            *contexts,
            "[[Profiles]]",
            "[JPEGLosslessOnly]",
            "PresentationContexts = JPEGLosslessOnlySCP",
            "",
        ]
    )
    path = folder / "storescp-jpeg-lossless-only.cfg"
    path.write_text(text, encoding="ascii")
    return ["-xf", str(path), "JPEGLosslessOnly"]
