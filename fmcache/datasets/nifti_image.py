"""One 2D NIfTI file (.nii, .nii.gz) as one image, laid out as radiologists view it.

A file is read when it holds one slice: a 2D image (x, y), or a 3D one with a single voxel
along one axis (trailing axes of length 1, e.g. (x, y, 1, 1), are dropped). A 2D image is
taken as the slice z = 0 of (x, y, 1). The voxels are reoriented to RAS+ with nibabel's
``io_orientation`` / ``apply_orientation`` (what ``as_closest_canonical`` does), so the
voxel order of the file does not matter; the axis of length 1 then says which plane the
slice is, and the slice is laid out as :func:`fmcache.datasets.volumes.load_nifti` lays out
that plane: canonical (slice, row, column) axes from ``PLANE_AXES``, then rows and columns
reversed. An axial slice thus has anterior at the top and the patient's right on the image's
left; coronal and sagittal ones have superior at the top. Intensities (scl_slope applied)
are min-max mapped to 0..255 (:func:`fmcache.datasets.eight_bit.minmax_to_uint8`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from fmcache.datasets.eight_bit import minmax_to_uint8
from fmcache.datasets.volumes import PLANE_AXES, is_nifti
from fmcache.errors import DatasetError

__all__ = ["check_nifti_header", "is_nifti", "read_nifti_slice"]
# the plane whose slice axis is a canonical axis: x (0) sagittal, y (1) coronal, z (2) axial
_PLANE_OF_AXIS = {axis: plane for plane, (axis, _, _) in PLANE_AXES.items()}


def _load(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"cannot read NIfTI {path}: {e.__class__.__name__}: {e} (file corrupt or truncated)") from None


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape as 3 spatial axes, refusing anything but one slice."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DatasetError(f"NIfTI {path} has shape {shape}; 2D datasets read one 2D image (one slice) per file")
    if sum(n > 1 for n in shape) > 2 or min(shape) == 0:
        raise DatasetError(
            f"NIfTI {path} has shape {shape}, more than one slice; 2D datasets read one slice per file: "
            f"save the slice you want as its own file, or use a 3D dataset for volumes"
        )
    return shape


def check_nifti_header(path: Path) -> None:
    """Read the header only and refuse what :func:`read_nifti_slice` would refuse from it."""
    _spatial_shape(path, _load(path).shape)


def read_nifti_slice(path: Path) -> np.ndarray:
    """The slice of a one-slice NIfTI file as uint8 (H, W), laid out as the module says."""
    from nibabel.orientations import apply_orientation, io_orientation

    img = _load(path)
    shape = _spatial_shape(path, img.shape)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"cannot read the voxels of NIfTI {path}: {e.__class__.__name__}: {e} (file corrupt or truncated)") from None
    canonical = apply_orientation(data, io_orientation(img.affine))
    # a 2D slice may be flat along x or y as well as z: its flat axis names its plane (z first)
    axis = next(a for a in (2, 1, 0) if canonical.shape[a] == 1)
    s, r, c = PLANE_AXES[_PLANE_OF_AXIS[axis]]
    pixels = np.transpose(canonical, (s, r, c))[0, ::-1, ::-1]
    return minmax_to_uint8(pixels)
