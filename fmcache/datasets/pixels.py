"""Opening 2D images as 8-bit RGB, with errors that name the file.

What is read, decided per file:

* DICOM: :mod:`fmcache.datasets.dicom_image` (modality LUT / rescale, then the VOI LUT or
  window, else min-max; MONOCHROME1 inverted). Recognised by the name (.dcm, .dicom), else
  by the DICM marker: for a name without a raster suffix (PACS exports often have none)
  before anything else, for a raster name (.png, ...) when PIL cannot identify the file.
* NIfTI (.nii, .nii.gz) holding one slice: :mod:`fmcache.datasets.nifti_image`.
* Anything else through PIL (PNG, JPEG, TIFF, BMP, ...). 8-bit images keep their values;
  16-bit, 32-bit integer and float grayscale (PIL modes I;16*, I, F) are min-max mapped to
  0..255 (:mod:`fmcache.datasets.eight_bit`) instead of PIL's ``convert``, which clips them
  at 255 and would turn most of a 16-bit radiograph white. A TIFF with several pages is
  refused, as a multi-frame DICOM is.

Grayscale is replicated to 3 channels. Truncated files raise (PIL's ``LOAD_TRUNCATED_IMAGES``
is left False). PIL's warnings about metadata (e.g. "Corrupt EXIF data") concern tags, not
pixels, and are not shown; an image beyond PIL's decompression-bomb limit is refused.
Warnings are silenced with ``warnings.catch_warnings``, which is process-wide state: decode
in processes (as the DataLoader workers do), not in threads of one process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmcache.datasets import dicom_image, nifti_image
from fmcache.datasets.eight_bit import minmax_to_uint8
from fmcache.errors import DatasetError

WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")
# names that go straight to PIL: probing them for the DICM marker would open every file twice
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm")
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"image file not found: {p} (check --data points at the dataset root)")
    return p


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully decoded, as 8-bit RGB (grayscale is replicated to 3 channels).

    DICOM, one-slice NIfTI and every format PIL reads; see the module for how wider
    intensities become 8 bits. Raises DatasetError naming the file when it is missing or
    cannot be decoded.
    """
    p = _existing(path)
    kind = _kind(p)
    if kind == "pil":
        try:
            return _open_pil(p)
        except _DicomInside:
            kind = "dicom"
    if kind == "dicom":
        return _rgb(dicom_image.read_dicom(p))
    return _rgb(nifti_image.read_nifti_slice(p))


def _open_pil(path: Path) -> Image.Image:
    with _pil_errors(path), Image.open(path) as im:
        _refuse_pages(path, im)
        im.load()
        if im.mode in WIDE_GRAY_MODES:
            return _rgb(minmax_to_uint8(np.asarray(im)))
        return im.convert("RGB")


def check_image_header(path: str | Path) -> None:
    """Read only what a file says about itself (format, size, mode; no pixels) and raise the
    DatasetError :func:`open_image` would raise from that, e.g. for a text file named .png,
    a DICOM without pixel data, a multi-frame file or a codec that is not installed.
    A file whose header is fine may still fail to decode (truncated pixel data)."""
    p = _existing(path)
    kind = _kind(p)
    if kind == "pil":
        try:
            with _pil_errors(p), Image.open(p) as im:
                _refuse_pages(p, im)
            return
        except _DicomInside:
            kind = "dicom"
    if kind == "dicom":
        dicom_image.check_dicom_header(p)
    else:
        nifti_image.check_nifti_header(p)


def _kind(path: Path) -> str:
    """dicom, nifti or pil: by the name, else (no raster image suffix) by the DICM marker. A
    raster-named file that PIL cannot identify but that has the marker is read as DICOM too."""
    suffix = path.suffix.lower()
    if suffix in dicom_image.SUFFIXES:
        return "dicom"
    if nifti_image.is_nifti(path):
        return "nifti"
    if suffix not in RASTER_SUFFIXES and dicom_image.has_dicom_marker(path):
        return "dicom"
    return "pil"


def _rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _refuse_pages(path: Path, im: Image.Image) -> None:
    # a TIFF stack is a volume or a series: which page is meant is the user's decision
    if im.format == "TIFF" and getattr(im, "n_frames", 1) > 1:
        raise DatasetError(
            f"TIFF {path} holds {im.n_frames} pages; 2D datasets read one image per file: save the page you want "
            f"as its own file"
        )


class _DicomInside(Exception):
    """PIL could not identify a file that has the DICM marker: a DICOM under a raster name."""


class _pil_errors:
    """PIL's exceptions as one DatasetError naming the file; its warnings not shown."""

    def __init__(self, path: Path):
        self.path = path
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, kind, error, tb) -> bool:
        self._warnings.__exit__(kind, error, tb)
        if isinstance(error, Image.DecompressionBombError):
            raise DatasetError(
                f"cannot read image {self.path}: {error} (an image this large is refused as a possible decompression "
                f"bomb; downscale it)"
            ) from None
        if isinstance(error, UnidentifiedImageError) and dicom_image.has_dicom_marker(self.path):
            raise _DicomInside() from None
        if isinstance(error, _PIL_ERRORS):
            raise DatasetError(
                f"cannot read image {self.path}: {error.__class__.__name__}: {error} (file corrupt, truncated or not an image)"
            ) from None
        return False
