"""Volume loading (NIfTI, DICOM series), intensity scaling and slice resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmcache.datasets.volumes import (
    LUNG_WINDOW,
    load_dicom_series,
    load_nifti,
    percentile_normalise,
    resample_slices,
    slice_minmax_normalise,
    slices_to_images,
    window,
)
from fmcache.errors import DatasetError

from helpers import official_layouts as ol
from helpers.synthetic_volumes import planted_volume

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

# ---------------------------------------------------------------------------- NIfTI

SHAPE = (4, 5, 6)  # canonical (R, A, S)


def canonical() -> np.ndarray:
    """Every voxel unique: 100 * superior index + 10 * anterior index + right index."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (100 * k + 10 * j + i).astype(np.int16)


def stored_as(perm: tuple[int, int, int], flip: tuple[bool, bool, bool]) -> tuple[np.ndarray, np.ndarray]:
    """The canonical volume as a file with voxel axis a = canonical axis perm[a], reversed where flip[a]."""
    data = np.transpose(canonical(), perm)
    affine = np.eye(4)
    affine[:3, :3] = 0
    for a, (c, f) in enumerate(zip(perm, flip)):
        if f:
            data = np.flip(data, a)
            affine[c, 3] = SHAPE[c] - 1
        affine[c, a] = -1.0 if f else 1.0
    return np.ascontiguousarray(data), affine


ORIENTATIONS = {
    "RAS": ((0, 1, 2), (False, False, False)),
    "LPS": ((0, 1, 2), (True, True, False)),
    "PSR": ((1, 2, 0), (True, False, False)),
    "SLA": ((2, 0, 1), (False, True, False)),
    "IPL": ((2, 1, 0), (True, True, True)),
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_slices_are_anatomical_whatever_the_file_order(tmp_path, name, suffix):
    data, affine = stored_as(*ORIENTATIONS[name])
    ol.write_nifti(tmp_path / f"v{suffix}", data, affine)
    vol = load_nifti(tmp_path / f"v{suffix}")
    expected = np.transpose(canonical(), (2, 1, 0))[:, ::-1, ::-1]
    assert vol.dtype == np.float32 and vol.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol, expected)
    # slice 0 is the most inferior; top-left pixel is anterior and on the patient's right
    assert vol[0, 0, 0] == 0 * 100 + 4 * 10 + 3
    assert np.all(np.diff(vol.mean(axis=(1, 2))) == 100)


@pytest.mark.parametrize("plane, axes", [("coronal", (1, 2, 0)), ("sagittal", (0, 2, 1))])
def test_nifti_other_planes(tmp_path, plane, axes):
    data, affine = stored_as(*ORIENTATIONS["PSR"])
    ol.write_nifti(tmp_path / "v.nii", data, affine)
    vol = load_nifti(tmp_path / "v.nii", plane=plane)
    np.testing.assert_array_equal(vol, np.transpose(canonical(), axes)[:, ::-1, ::-1])


def test_nifti_trailing_singleton_dimension_and_scaling(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(canonical()[..., None], np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, str(tmp_path / "v4.nii"))
    vol = load_nifti(tmp_path / "v4.nii")
    assert vol.shape == (6, 5, 4)
    assert vol[0, -1, -1] == -5.0 and vol[1, -1, -1] == 195.0


def test_nifti_errors_name_the_file(tmp_path):
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(DatasetError, match=r"garbage\.nii"):
        load_nifti(bad)
    ol.write_nifti(tmp_path / "v.nii.gz", canonical(), np.eye(4))
    raw = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"cut\.nii\.gz"):
        load_nifti(tmp_path / "cut.nii.gz")
    ol.write_nifti(tmp_path / "flat.nii", np.zeros((3, 4), np.int16), np.eye(4))
    with pytest.raises(DatasetError, match=r"flat\.nii.*3D"):
        load_nifti(tmp_path / "flat.nii")
    with pytest.raises(DatasetError, match=r"absent\.nii"):
        load_nifti(tmp_path / "absent.nii")


# ---------------------------------------------------------------------------- DICOM


def series(folder: Path, n: int = 5, **kwargs) -> None:
    """n slices: slice k (k = 0 inferior) stores 100 + k everywhere, files named in shuffled order."""
    from pydicom.uid import generate_uid

    study, uid = generate_uid(), generate_uid()
    names = np.random.default_rng(3).permutation(n)
    skip = set(kwargs.pop("skip", ()))
    orientation = kwargs.pop("orientation", (1, 0, 0, 0, 1, 0))
    z_sign = kwargs.pop("z_sign", 1.0)
    for k in range(n):
        z = -50.0 + 2.0 * k
        ol.write_dicom_slice(
            folder / f"IMG_{names[k]}.dcm",
            np.full((4, 6), 100 + k, np.uint16),
            series_uid=uid, study_uid=study,
            position=None if "position" in skip else (0.0, 0.0, z),
            orientation=None if "position" in skip else orientation,
            instance=None if "instance" in skip else (n - k if z_sign > 0 else k + 1),
            slice_location=None if "location" in skip else z,
            **kwargs,
        )


def slice_values(vol: np.ndarray) -> list[float]:
    return [float(v) for v in vol[:, 0, 0]]


def test_dicom_sorted_by_position_not_file_name_and_rescaled(tmp_path):
    series(tmp_path, slope=2.0, intercept=-1024.0)
    vol = load_dicom_series(tmp_path)
    assert vol.dtype == np.float32 and vol.shape == (5, 4, 6)
    assert slice_values(vol) == [2.0 * (100 + k) - 1024.0 for k in range(5)]


def test_dicom_normal_pointing_down_still_runs_inferior_to_superior(tmp_path):
    # rows running posterior -> anterior flip the normal to -z; the order must not flip with it
    series(tmp_path, orientation=(1, 0, 0, 0, -1, 0), intercept=0.0)
    assert slice_values(load_dicom_series(tmp_path)) == [100.0 + k for k in range(5)]


@pytest.mark.parametrize("skip", [("position",), ("position", "location")])
def test_dicom_ordering_fallbacks(tmp_path, skip):
    # without positions: SliceLocation; without that too: InstanceNumber (numbered from the top here)
    series(tmp_path, skip=skip, intercept=0.0)
    values = slice_values(load_dicom_series(tmp_path))
    expected = [100.0 + k for k in range(5)]
    assert values == (expected if "location" not in skip else expected[::-1])


def test_dicom_without_any_ordering_tag_names_the_folder(tmp_path):
    series(tmp_path / "p1", skip=("position", "location", "instance"))
    with pytest.raises(DatasetError, match=r"cannot order.*p1.*InstanceNumber"):
        load_dicom_series(tmp_path / "p1")


def test_dicom_mixed_series_and_duplicates_name_the_folder(tmp_path):
    series(tmp_path / "mixed", n=3)
    series(tmp_path / "mixed", n=2)  # a second SeriesInstanceUID in the same folder
    with pytest.raises(DatasetError, match=r"mixed.*mixes series.*SeriesInstanceUID"):
        load_dicom_series(tmp_path / "mixed")
    series(tmp_path / "dup", n=3)
    src = min((tmp_path / "dup").glob("*.dcm"))
    (tmp_path / "dup" / "copy.dcm").write_bytes(src.read_bytes())
    with pytest.raises(DatasetError, match=r"dup.*same ImagePositionPatient"):
        load_dicom_series(tmp_path / "dup")


def test_dicom_localizer_is_skipped(tmp_path):
    series(tmp_path, n=3, intercept=0.0)
    ol.write_dicom_slice(tmp_path / "scout.dcm", np.zeros((4, 6), np.uint16), series_uid="1.2.3", study_uid="1.2",
                         position=(0, 0, 0), instance=99, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert slice_values(load_dicom_series(tmp_path)) == [100.0, 101.0, 102.0]


def test_dicom_corrupt_file_and_empty_folder_are_named(tmp_path):
    series(tmp_path / "p", n=3)
    victim = sorted((tmp_path / "p").glob("*.dcm"))[1]
    victim.write_bytes(b"\0" * 64)
    with pytest.raises(DatasetError, match=victim.name):
        load_dicom_series(tmp_path / "p")
    series(tmp_path / "q", n=3)
    victim = min((tmp_path / "q").glob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-20])  # pixel data cut short
    with pytest.raises(DatasetError, match=victim.name):
        load_dicom_series(tmp_path / "q")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no DICOM.*empty"):
        load_dicom_series(tmp_path / "empty")


# ---------------------------------------------------------------------------- intensities


def test_lung_window_bounds_and_level():
    hu = np.array([[[-3000.0, -1350.0, -600.0, 150.0, 3000.0]]])
    out = window(hu, *LUNG_WINDOW)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_percentile_normalise_bounds():
    rng = np.random.default_rng(0)
    vol = rng.normal(300, 50, (8, 16, 16)).astype(np.float32)
    vol[0, 0, 0], vol[1, 1, 1] = 1e6, -1e6  # a hot and a cold voxel must not set the scale
    out = percentile_normalise(vol)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < float(np.median(out)) < 0.7
    assert not percentile_normalise(np.full((2, 3, 3), 7.0)).any()


def test_slice_minmax_normalise_scales_each_slice_on_its_own():
    rng = np.random.default_rng(0)
    scale, offset = np.array([1.0, 40.0, 900.0]), np.array([-7.0, 0.0, 3e3])
    vol = rng.normal(0, 1, (3, 5, 6)) * scale[:, None, None] + offset[:, None, None]
    out = slice_minmax_normalise(vol)
    assert out.dtype == np.float32
    for s, v in enumerate(vol):
        np.testing.assert_allclose(out[s], (v - v.min()) / (v.max() - v.min()), atol=1e-6)
    vol[1, 0, 0], vol[1, 0, 1] = np.nan, np.inf  # neither sets the scale; both come back as 0
    out = slice_minmax_normalise(vol)
    v = vol[1][np.isfinite(vol[1])]
    assert out[1].max() == 1.0 and out[1, 0, 0] == 0.0 and out[1, 0, 1] == 0.0
    np.testing.assert_allclose(out[1, 1], (vol[1, 1] - v.min()) / (v.max() - v.min()), atol=1e-6)
    const = np.stack([np.full((2, 2), 7.0), np.full((2, 2), np.nan), np.arange(4.0).reshape(2, 2)])
    np.testing.assert_array_equal(slice_minmax_normalise(const)[:2], 0.0)


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("s", [1, 7, 31, 33, 100])
def test_resample_gives_32_slices_in_order(s):
    vol = np.broadcast_to(np.arange(s, dtype=np.float32)[:, None, None], (s, 3, 2))
    out = resample_slices(vol)
    assert out.shape == (32, 3, 2) and out.dtype == np.float32
    means = out[:, 0, 0]
    assert np.all(np.diff(means) >= 0) and means[0] >= 0 and means[-1] <= s - 1
    if s > 32:
        assert np.all(np.diff(means) > 0)


def test_resample_is_exact_at_32_and_matches_torch():
    vol = np.random.default_rng(1).random((32, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(resample_slices(vol), vol)
    torch = pytest.importorskip("torch")
    for s in (10, 75):
        v = np.random.default_rng(s).random((s, 3, 3)).astype(np.float32)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(v).permute(1, 2, 0).reshape(1, 9, s), size=32, mode="linear", align_corners=False
        ).reshape(3, 3, 32).permute(2, 0, 1).numpy()
        np.testing.assert_allclose(resample_slices(v), ref, atol=1e-6)


def test_slices_to_images():
    vol = np.stack([np.zeros((3, 5)), np.full((3, 5), 0.5), np.full((3, 5), 2.0)]).astype(np.float32)
    images = slices_to_images(vol)
    assert len(images) == 3 and all(im.mode == "RGB" and im.size == (5, 3) for im in images)
    assert [im.getpixel((0, 0)) for im in images] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_planted_volume_survives_resampling():
    for n, k in ((20, 7), (64, 40), (32, 0)):
        vol = planted_volume(n, k)
        assert vol.shape == (n, 32, 32) and 0.0 <= vol.min() and vol.max() <= 1.0
        assert int(np.argmax(vol.max(axis=(1, 2)))) == k
        peaks = resample_slices(vol).max(axis=(1, 2))
        assert abs(int(np.argmax(peaks)) - (k + 0.5) * 32 / n) <= 1.0
        assert peaks.max() > 0.45 and np.median(peaks) < 0.2
