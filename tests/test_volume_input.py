"""A volume to a 3D model's input block and a prediction back: a sphere of known position on an
anisotropic, oblique grid stored in a non-canonical axis order survives the round trip."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from fmcache.datasets.volume_grid import read_nifti_volume
from fmcache.errors import SegmentInputError
from fmcache.segment.volume_input import VolumeGeometry, to_model_input, to_original_grid

FILE_SHAPE = (40, 160, 128)  # stored slice-first: superior, left, posterior
RADIUS_MM = 8.0
SPACING = 1.5
SIZE = 64


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(t)
    r[i, j], r[j, i] = -np.sin(t), np.sin(t)
    return r


def _file_affine() -> np.ndarray:
    axes = np.zeros((3, 3))
    axes[2, 0], axes[0, 1], axes[1, 2] = 3.0, -0.8, -0.8  # 3 mm toward S, 0.8 mm toward L and P
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0, 12) @ _rotation(2, -7) @ axes  # oblique: canonical axes stay tilted
    affine[:3, 3] = (30.0, 40.0, -50.0)
    return affine


def _sphere_file(tmp_path, name: str, center_file_voxel) -> tuple:
    """The NIfTI of a sphere around a file voxel, read back canonical, and its centre in mm."""
    affine = _file_affine()
    center_mm = (affine @ np.append(center_file_voxel, 1.0))[:3]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in FILE_SHAPE], indexing="ij"), -1)
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    labels = (np.linalg.norm(mm - center_mm, axis=-1) <= RADIUS_MM).astype(np.uint8)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    volume = read_nifti_volume(path, labels=True)
    return volume, center_mm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a.astype(bool) & b.astype(bool)).sum()) / float(a.astype(bool).sum() + b.astype(bool).sum())


@pytest.fixture(scope="module")
def centred(tmp_path_factory):
    return _sphere_file(tmp_path_factory.mktemp("vol"), "centred.nii.gz", (np.array(FILE_SHAPE) - 1) / 2)


@pytest.fixture(scope="module")
def near_corner(tmp_path_factory):
    # 15 mm above the bottom, 10 mm from the left edge, 10 mm from the posterior edge
    return _sphere_file(tmp_path_factory.mktemp("vol"), "corner.nii.gz", (5, 12, 115))


def test_the_geometry_records_the_hand_computed_grid_and_block(centred):
    volume, _ = centred
    _, geometry = to_model_input(volume, spacing=SPACING, size=SIZE, mode="nearest")
    # canonical order R, A, S: file axis 1 (left) flipped, axis 2 (posterior) flipped, axis 0 last
    assert geometry.original_shape == (160, 128, 40)
    assert geometry.orientation == ("R", "A", "S")
    np.testing.assert_allclose(geometry.original_spacing, (0.8, 0.8, 3.0), atol=1e-6)  # float32 in the file
    assert geometry.target_spacing == (1.5, 1.5, 1.5)
    # voxel centres span (n - 1) * spacing mm; the resampled grid keeps the first voxel and the directions
    assert geometry.resampled_shape == tuple(round((n - 1) * s / SPACING) + 1
                                             for n, s in zip((160, 128, 40), (0.8, 0.8, 3.0)))
    assert geometry.resampled_shape == (86, 69, 79)
    expected = volume.affine.copy()
    expected[:3, :3] = volume.affine[:3, :3] * (SPACING / np.array(volume.spacing))
    np.testing.assert_allclose(geometry.resampled_affine, expected, atol=1e-6)
    assert not np.allclose(np.abs(expected[:3, :3]), np.diag(np.abs(expected[:3, :3]).diagonal()))  # still oblique
    assert geometry.box_start == ((86 - 64) // 2, (69 - 64) // 2, (79 - 64) // 2) == (11, 2, 7)
    assert geometry.box_size == (64, 64, 64)


def test_a_centred_sphere_comes_back_on_its_original_voxels(centred):
    volume, center_mm = centred
    truth = volume.array
    soft, geometry = to_model_input(volume, spacing=SPACING, size=SIZE, mode="bilinear")
    # the block's voxel positions: the sphere's centre of mass sits where the input affine says
    com = np.array(np.nonzero(soft > 0.5)).mean(axis=1)
    np.testing.assert_allclose((geometry.input_affine @ np.append(com, 1.0))[:3], center_mm, atol=0.5)
    assert _dice(to_original_grid(soft, geometry, threshold=0.5), truth) >= 0.98  # measured 0.993
    # a 0/1 mask at 1.5 mm moves each boundary by up to 0.75 mm on the 0.8 mm grid
    hard, _ = to_model_input(volume, spacing=SPACING, size=SIZE, mode="nearest")
    back = to_original_grid(hard.astype(np.uint8), geometry)
    assert back.dtype == np.uint8 and back.shape == truth.shape
    assert _dice(back, truth) >= 0.9  # measured 0.933


def test_a_block_around_a_given_centre_near_the_border_round_trips(near_corner):
    volume, center_mm = near_corner
    center_voxel = np.linalg.solve(volume.affine, np.append(center_mm, 1.0))[:3]  # canonical voxel
    soft, geometry = to_model_input(volume, spacing=SPACING, size=SIZE, center=center_voxel)
    # same origin and directions: a voxel's resampled index is its index scaled by spacing / 1.5
    at = np.floor(center_voxel * np.array(volume.spacing) / SPACING + 0.5).astype(int)
    assert geometry.box_start == tuple(int(c) - SIZE // 2 for c in at)
    end = np.array(geometry.box_start) + SIZE
    assert min(geometry.box_start) < 0 and (end > np.array(geometry.resampled_shape)).any()  # pads and crops
    assert soft[SIZE // 2, SIZE // 2, SIZE // 2] > 0.9  # the given centre lands in the block's middle
    com = np.array(np.nonzero(soft > 0.5)).mean(axis=1)
    np.testing.assert_allclose(com, SIZE // 2, atol=1.0)
    assert _dice(to_original_grid(soft, geometry, threshold=0.5), volume.array) >= 0.98


def test_the_geometry_survives_json(near_corner):
    volume, center_mm = near_corner
    center_voxel = np.linalg.solve(volume.affine, np.append(center_mm, 1.0))[:3]
    soft, geometry = to_model_input(volume, spacing=SPACING, size=SIZE, center=center_voxel)
    text = geometry.to_json()
    json.loads(text)  # plain JSON, no custom encoder
    decoded = VolumeGeometry.from_json(text)
    assert decoded == geometry
    np.testing.assert_array_equal(to_original_grid(soft, decoded, threshold=0.5),
                                  to_original_grid(soft, geometry, threshold=0.5))
    with pytest.raises(SegmentInputError, match="not a volume geometry record"):
        VolumeGeometry.from_json(json.dumps({**json.loads(text), "box_start": [1, 2]}))


def test_a_mask_of_another_shape_or_an_unthresholded_float_mask_is_refused(centred):
    volume, _ = centred
    soft, geometry = to_model_input(volume, spacing=SPACING, size=SIZE)
    with pytest.raises(SegmentInputError, match="input block is"):
        to_original_grid(soft[:-1], geometry, threshold=0.5)
    with pytest.raises(SegmentInputError, match="needs a threshold"):
        to_original_grid(soft, geometry)


def test_reading_a_stored_geometry_loads_neither_monai_nor_torch(centred):
    import subprocess
    import sys

    _, geometry = to_model_input(centred[0], spacing=SPACING, size=SIZE)
    code = ("import sys; from fmcache.segment import VolumeGeometry; "
            f"VolumeGeometry.from_json({geometry.to_json()!r}); "
            "print(sorted(m for m in ('monai', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cache_vector_keeps_every_field(near_corner):
    from fmcache.segment.volume_input import VECTOR_LENGTH

    volume, center_mm = near_corner
    center = np.linalg.solve(volume.affine, np.append(center_mm, 1.0))[:3]
    _, geometry = to_model_input(volume, SPACING, SIZE, center=center)
    v = geometry.to_vector()
    assert v.shape == (VECTOR_LENGTH,) and v.dtype == np.float64
    back = VolumeGeometry.from_vector(v)
    assert back == geometry  # spacing and orientation read off the affine equal the recorded ones
    with pytest.raises(SegmentInputError, match="47 numbers"):
        VolumeGeometry.from_vector(v[:-1])


def test_a_whole_volume_resize_round_trips_like_a_resampling(centred):
    """SegVol's zoom-out: the whole oblique volume resized to a small block (its own grid,
    recorded as a resampling) and the sphere mapped back from the block's scores."""
    from fmcache.segment.volume_input import resize_to_model_input, to_block_coords

    volume, center_mm = centred
    block, geometry = resize_to_model_input(volume, (48, 40, 20), mode="trilinear")
    assert block.shape == (48, 40, 20) and geometry.box_start == (0, 0, 0)
    np.testing.assert_allclose(geometry.target_spacing, np.array(volume.spacing) * np.array(volume.shape)
                               / np.array([48, 40, 20]))
    # the sphere's centre lands where the resize put it: block voxel j sits at source voxel (j + 0.5) n / m - 0.5
    centre_voxel = np.linalg.solve(volume.affine, np.append(center_mm, 1.0))[:3]
    expected = (centre_voxel + 0.5) * np.array([48, 40, 20]) / np.array(volume.shape) - 0.5
    np.testing.assert_allclose(to_block_coords(centre_voxel, geometry), expected, atol=1e-9)
    back = to_original_grid(block, geometry, threshold=0.5)
    assert _dice(back, volume.array) >= 0.9  # a 20-slice block of a 3 mm sphere grid: coarse, but on target


def test_sam_med3d_intensity_recipe_is_the_z_score_over_positive_voxels():
    from fmcache.segment.volume_intensity import apply_recipe

    x = np.array([[[-100.0, 0.0], [1.0, 2.0]], [[3.0, 6.0], [-5.0, 0.0]]], np.float32)
    pos = np.array([1.0, 2.0, 3.0, 6.0])
    expected = (x - pos.mean()) / pos.std(ddof=1)  # torch's std is unbiased, as torchio uses it
    np.testing.assert_allclose(apply_recipe("znorm_positive", x), expected, rtol=1e-6)
    assert np.isfinite(apply_recipe("znorm_positive", np.full((2, 2, 2), -3.0, np.float32))).all()
    with pytest.raises(SegmentInputError, match="unknown intensity recipe"):
        apply_recipe("windowed", x)


def test_a_point_lands_on_its_own_voxel_in_the_block(centred):
    """A volume whose every voxel holds its own index, resampled by nearest neighbour: the voxel
    of the block at ``to_block_coords(p)`` carries p's index, for points across the block."""
    from fmcache.datasets.volume_grid import Volume
    from fmcache.segment.volume_input import to_block_coords

    volume, _ = centred
    index = np.arange(volume.array.size, dtype=np.float64).reshape(volume.shape)
    numbered = Volume(index, volume.affine)
    centre = (np.array(volume.shape) - 1) / 2
    block, geometry = to_model_input(numbered, 2.0, 48, center=centre, mode="nearest")
    rng = np.random.default_rng(0)
    points = centre + rng.integers(-15, 16, (20, 3))
    for p in points:
        b = np.rint(to_block_coords(p, geometry)).astype(int)
        assert (0 <= b).all() and (b < 48).all()
        # nearest neighbour on both sides: the block voxel's source lies within half a block voxel
        # plus half a source voxel of p (in mm), never a box start or an axis away
        source = np.array(np.unravel_index(int(block[tuple(b)]), volume.shape), dtype=np.float64)
        gap = np.linalg.norm(volume.affine[:3, :3] @ (source - p))
        assert gap <= 0.5 * np.sqrt(3) * 2.0 + 0.5 * np.linalg.norm(volume.spacing) + 1e-6
