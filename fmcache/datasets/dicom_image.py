"""One DICOM file as one 2D image, shown the way the file says it is meant to be shown.

The display pipeline of DICOM PS3.3 C.11, with pydicom's own implementation of each step:

1. ``pixel_array``: the stored values; colour in YBR is converted to RGB by pydicom.
2. Grayscale (MONOCHROME1/2): ``apply_modality_lut`` (Modality LUT or RescaleSlope /
   RescaleIntercept: CT in HU), then ``apply_voi_lut`` with the first VOI LUT, else the first
   WindowCenter / WindowWidth. The VOI's output range (the window, or the VOI LUT's lowest to
   highest entry) becomes 0..255. Without a VOI LUT or window the image's own min..max
   becomes 0..255. MONOCHROME1 (low values shown white) is then inverted, so bright always
   means what it means on a MONOCHROME2 screen.
3. PALETTE COLOR: ``apply_color_lut``; the LUT's nominal 8- or 16-bit range becomes 0..255.
   RGB with more than 8 bits stored: 0..2**BitsStored - 1 becomes 0..255.

A file with more than one frame (cine, tomosynthesis, a multi-frame CT) is refused rather
than a frame picked for it: which frame a study means is the user's decision.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fmcache.datasets.eight_bit import minmax_to_uint8, range_to_uint8
from fmcache.errors import DatasetError

SUFFIXES = (".dcm", ".dicom")
# bytes 128..131 of a DICOM Part 10 file; the 128 before them are a free preamble
MAGIC_OFFSET, MAGIC = 128, b"DICM"
CODECS_HINT = "install the DICOM codecs: pip install 'fmcache[dicom]'"
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")
# (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# what pydicom raises for a malformed file or pixel data that does not match its tags
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError)


def has_dicom_marker(path: Path) -> bool:
    """Whether the file has the DICM marker after the 128-byte preamble (a DICOM Part 10 file)."""
    try:
        with open(path, "rb") as f:
            f.seek(MAGIC_OFFSET)
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _read(path: Path, *, header_only: bool) -> tuple[Any, bytes]:
    """The dataset (without its pixels when ``header_only``) and the 4 bytes after where reading stopped."""
    try:
        with open(path, "rb") as f:
            ds = _parse(f, path, header_only)
            return ds, f.read(4) if header_only else b""
    except OSError as e:
        raise DatasetError(f"cannot read DICOM {path}: {e.__class__.__name__}: {_one_line(e)}") from None


def _parse(f, path: Path, header_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(f, stop_before_pixels=header_only)
    except InvalidDicomError:
        # older archives hold bare datasets without the preamble and file meta: read them as such,
        # but only when what comes out is an image, else the file is simply not DICOM
        f.seek(0)
        forced = _parse_bare(f, header_only)
        if forced is None:
            raise DatasetError(
                f"cannot read DICOM {path}: it has no 'DICM' marker, and read as a bare dataset it holds no image "
                f"(not a DICOM file, or a damaged one)"
            ) from None
        return forced
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read DICOM {path}: {e.__class__.__name__}: {_one_line(e)} (file corrupt, truncated or not DICOM)") from None


def _parse_bare(f, header_only: bool):
    """A dataset without file meta, its transfer syntax set from the encoding pydicom found; None if no image."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(f, stop_before_pixels=header_only, force=True)
    except _READ_ERRORS:
        return None
    if ds.get("Rows") is None or ds.get("Columns") is None:
        return None
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _check_image_module(path: Path, ds) -> None:
    """Refuse, from the header alone, a file that holds no single 2D image we can decode."""
    missing = [t for t in ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated") if ds.get(t) in (None, "")]
    if missing:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality") or "unknown kind"
        raise DatasetError(
            f"DICOM {path} holds no image ({kind}; no {', '.join(missing)}); list only image files in the CSV"
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DatasetError(
            f"DICOM {path} holds {frames} frames; 2D datasets read one image per file: save the frame you "
            f"want as its own file"
        )
    pi = str(ds.PhotometricInterpretation).strip().upper()
    if pi not in _GRAY + _COLOUR:
        raise DatasetError(
            f"DICOM {path} has PhotometricInterpretation {pi!r}, which is not read; convert it to MONOCHROME2 or RGB"
        )
    _check_codec(path, ds)


def _check_codec(path: Path, ds) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return  # native (or inferred) encodings are decoded by pydicom itself
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DatasetError(
            f"DICOM {path} uses the transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode; "
            f"convert it to an uncompressed syntax (e.g. gdcmconv --raw or dcmdjpeg)"
        ) from None
    if not decoder.is_available:
        raise DatasetError(
            f"DICOM {path} uses the compressed transfer syntax {syntax.name} ({syntax}) and no decoder for it is "
            f"installed; {CODECS_HINT}"
        )


def check_dicom_header(path: Path) -> None:
    """Read the header only (no pixels) and refuse what :func:`read_dicom` would refuse from it,
    a file without a pixel data element included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings on odd but readable tags are not ours to show
        ds, after = _read(path, header_only=True)
        _check_image_module(path, ds)
        if not _pixel_data_follows(path, ds, after):
            raise _no_pixels(path)


def _no_pixels(path: Path) -> DatasetError:
    return DatasetError(f"DICOM {path} has image tags (Rows, Columns) but no pixel data element; export it again with its pixels")


def _pixel_data_follows(path: Path, ds, after: bytes) -> bool:
    """Whether a pixel data element is where the header-only read stopped: pydicom stops with the
    file positioned at that element's tag, so its 4 bytes are all there is to read."""
    import struct

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        # positions in a deflated body are not file positions: read it whole (such files are small)
        return any(k in _read(path, header_only=False)[0] for k in _PIXEL_KEYWORDS)
    if len(after) < 4:
        return False
    little = ds.original_encoding[1] is not False
    return struct.unpack("<HH" if little else ">HH", after) in _PIXEL_TAGS


def read_dicom(path: Path) -> np.ndarray:
    """The pixels of a single-frame DICOM file as uint8, (H, W) for grayscale or (H, W, 3) RGB.

    Raises DatasetError naming the file when it is not a readable single 2D image, or when
    its compression needs a codec that is not installed (naming the transfer syntax).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(path, header_only=False)[0]
        _check_image_module(path, ds)
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            raise _no_pixels(path)
        try:
            arr = ds.pixel_array
        except RuntimeError as e:  # every installed decoder of a compressed syntax failed
            syntax = ds.file_meta.TransferSyntaxUID
            raise DatasetError(
                f"cannot decode the {syntax.name} pixel data of DICOM {path}: {_one_line(e)}; if the file is intact, "
                f"the decoders installed do not handle it: {CODECS_HINT}"
            ) from None
        except _READ_ERRORS + (NotImplementedError,) as e:
            raise DatasetError(
                f"cannot decode the pixels of DICOM {path}: {e.__class__.__name__}: {_one_line(e)} (file corrupt or truncated)"
            ) from None
        pi = str(ds.PhotometricInterpretation).strip().upper()
        if pi in _GRAY:
            return _gray(path, ds, arr, invert=pi == "MONOCHROME1")
        return _colour(path, ds, arr, pi)


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _has_voi(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    lut = bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))
    return lut or None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))


def _voi_range(ds) -> tuple[float, float]:
    """What the VOI step can output: a window's low and high ends, or a VOI LUT's lowest and
    highest entries; found by passing probes through pydicom's own transform."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData")):
        entries, first = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
        probe: np.ndarray = np.arange(first, first + entries, dtype=np.int64)
    else:
        probe = np.array([-1e300, 1e300])  # far below and above any window
    with np.errstate(over="ignore"):  # a SIGMOID window saturates through exp overflow
        out = apply_voi_lut(probe, ds)
    return float(np.min(out)), float(np.max(out))


def _gray(path: Path, ds, arr: np.ndarray, *, invert: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if arr.ndim != 2:
        raise DatasetError(f"DICOM {path} is grayscale but its pixel data has shape {arr.shape}, not (rows, columns)")
    try:
        values = apply_modality_lut(arr, ds)
        if _has_voi(ds):
            low, high = _voi_range(ds)
            shown = apply_voi_lut(values, ds)
            out = range_to_uint8(shown, low, high) if high > low else minmax_to_uint8(shown)
        else:
            out = minmax_to_uint8(values)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, NotImplementedError) as e:
        raise DatasetError(
            f"cannot apply the modality / VOI LUT of DICOM {path}: {e.__class__.__name__}: {_one_line(e)}; "
            f"correct or remove the window tags (WindowCenter, WindowWidth, VOILUTSequence)"
        ) from None
    return 255 - out if invert else out


def _colour(path: Path, ds, arr: np.ndarray, pi: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if pi == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise DatasetError(f"cannot apply the colour palette of DICOM {path}: {e.__class__.__name__}: {_one_line(e)}") from None
        top: Any = np.iinfo(arr.dtype).max
    else:
        top = 2 ** int(ds.get("BitsStored") or ds.BitsAllocated) - 1
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DatasetError(f"DICOM {path} is {pi} but its pixel data has shape {arr.shape}, not (rows, columns, 3)")
    return arr.astype(np.uint8) if top == 255 else range_to_uint8(arr, 0.0, float(top))
