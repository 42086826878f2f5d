"""The image files researchers have, read through the csv adapter: DICOM, 16-bit PNG, TIFF, NIfTI.

Every expected image is decoded here independently of fmcache: pydicom's stored values with
the DICOM display rules (PS3.3 C.11) written out in numpy, PIL / nibabel arrays with the
min-max rule written out, and the layouts worked out by hand. Cached features are compared
with those images run through the model directly.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset as DicomDataset
from pydicom.sequence import Sequence

import fmcache
from fmcache.datasets import load_dataset
from fmcache.datasets.check import SHOW_UNREADABLE, check_dataset
from fmcache.datasets.eight_bit import minmax_to_uint8
from fmcache.datasets.pixels import check_image_header, open_image
from fmcache.embed.encode import embed
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import load_model
from fmcache.errors import DatasetError

MODEL = "efficientnet_lite0"
CODECS = "pip install 'fmcache[dicom]'"


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(path)


# ---------------------------------------------------------------- independent reference decoders


def _minmax(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.round((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


def _modality(ds) -> np.ndarray:
    """Stored values to modality units: value * RescaleSlope + RescaleIntercept (PS3.3 C.11.1)."""
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR: c - 0.5 - (w - 1) / 2 and below is black, c - 0.5 + (w - 1) / 2 and
    above white, linear between; black..white as 0..255."""
    t = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.round(np.clip(t, 0.0, 1.0) * 255).astype(np.uint8)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(open_image(path))


# ---------------------------------------------------------------- fixture files


def _ct(path: Path, **tags) -> Path:
    """pydicom's CT_small (RescaleSlope 1, RescaleIntercept -1024, no window) with ``tags`` changed
    (None deletes one)."""
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    for name, value in tags.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def effnet():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A CSV over one file of each kind, and each file's expected RGB pixels (decoded here)."""
    folder = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    expected: dict[str, np.ndarray] = {}

    ct = pydicom.dcmread(_testdata("CT_small.dcm"))
    shutil.copy(_testdata("CT_small.dcm"), folder / "ct.dcm")
    expected["ct.dcm"] = _rgb(_minmax(_modality(ct)))  # no window: min-max of the HU values

    windowed = _ct(folder / "ct_window.dcm", WindowCenter=40, WindowWidth=400)
    expected["ct_window.dcm"] = _rgb(_linear_window(_modality(pydicom.dcmread(windowed)), 40, 400))

    mr = pydicom.dcmread(_testdata("MR_small.dcm"))  # no rescale, window 600 / 1600
    shutil.copy(_testdata("MR_small.dcm"), folder / "mr.dcm")
    expected["mr.dcm"] = _rgb(_linear_window(_modality(mr), float(mr.WindowCenter), float(mr.WindowWidth)))

    _ct(folder / "ct_mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    expected["ct_mono1.dcm"] = 255 - expected["ct.dcm"]  # low stored values are shown white

    sixteen = rng.integers(1000, 40000, (40, 48), dtype=np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    assert Image.open(folder / "sixteen.png").mode == "I;16"
    expected["sixteen.png"] = _rgb(_minmax(sixteen))

    colour = rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)
    Image.fromarray(colour).save(folder / "colour.tif")
    expected["colour.tif"] = colour

    floats = rng.normal(0, 3, (30, 34)).astype(np.float32)
    Image.fromarray(floats).save(folder / "float.tif")
    assert Image.open(folder / "float.tif").mode == "F"
    expected["float.tif"] = _rgb(_minmax(floats))

    # stored LAS (x grows toward the patient's left): voxel x = 0 is the patient's right, which
    # radiological display puts on the image's left, so columns keep the file's x order; rows
    # run from anterior (largest y) down to posterior
    axial = rng.normal(0, 1, (40, 32)).astype(np.float32)  # (x, y)
    _nifti(folder / "axial.nii.gz", axial, np.diag([-1.0, 1.0, 1.0, 1.0]))
    expected["axial.nii.gz"] = _rgb(_minmax(axial.T[::-1, :]))

    names = list(expected)
    rows = ["path,label", *(f"{n},{i % 2}" for i, n in enumerate(names))]
    (folder / "study.csv").write_text("\n".join(rows) + "\n")
    return folder / "study.csv", expected


def _direct_features(enc, images: list[np.ndarray]) -> np.ndarray:
    tf = build_transform(enc.spec.preprocess)
    x = torch.stack([tf(Image.fromarray(a)) for a in images])
    with torch.inference_mode():
        return enc.encode_image(x)["image"].float().numpy()


def _embed(ds, root: Path, enc):
    return embed(ds, MODEL, root=root, encoder=enc, batch_size=4, chunk_rows=4, num_workers=0, progress=False,
                 device="cpu")


# ---------------------------------------------------------------- through the csv adapter


def test_every_kind_of_file_decodes_to_the_independent_reference(study):
    csv, expected = study
    ds = load_dataset("csv", csv)
    for i, name in enumerate(ds.table["id"]):
        np.testing.assert_array_equal(np.asarray(ds.image(i)), expected[name], err_msg=name)


def test_cached_features_equal_the_reference_images_run_through_the_model(study, effnet, tmp_path):
    csv, expected = study
    ds = load_dataset("csv", csv)
    summary = _embed(ds, tmp_path / "cache", effnet)
    assert summary.encoded == len(expected) == len(ds.table)
    emb = fmcache.open_cache(tmp_path / "cache").embeddings(ds.name, MODEL)
    assert list(emb.samples()["id"]) == list(ds.table["id"])
    reference = _direct_features(effnet, [expected[name] for name in ds.table["id"]])
    np.testing.assert_allclose(emb.features(), reference, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------- a bad row leaves no entry


@pytest.mark.parametrize("kind", ["text-named-png", "dicom-without-pixels", "dicom-of-a-plan"])
def test_a_bad_row_is_refused_before_the_entry_is_made(tmp_path, effnet, kind):
    folder = tmp_path / "study"
    folder.mkdir()
    Image.new("L", (20, 20), 90).save(folder / "good.png")
    if kind == "text-named-png":
        bad, why = "bad.png", "cannot identify image file"
        (folder / bad).write_text("patient,age\nP1,71\n")
    elif kind == "dicom-without-pixels":
        bad, why = "bad.dcm", "no pixel data element"
        _ct(folder / bad, PixelData=None)
    else:
        bad, why = "bad.dcm", "holds no image (RT Plan Storage"
        shutil.copy(_testdata("rtplan.dcm"), folder / bad)
    csv = folder / "study.csv"
    csv.write_text(f"path,label\ngood.png,0\n{bad},1\n")
    ds = load_dataset("csv", csv)
    root = tmp_path / "cache"
    with pytest.raises(DatasetError) as e:
        _embed(ds, root, effnet)
    message = str(e.value)
    assert "\n" not in message
    assert str(folder / bad) in message and f"(row '{bad}')" in message and why in message
    assert f"`fmcache datasets check csv --data {csv}`" in message
    assert not root.exists() or ds.name not in fmcache.open_cache(root).datasets()


def test_pixels_that_fail_behind_a_sound_header_name_the_row_and_the_check(tmp_path, effnet):
    folder = tmp_path / "study"
    folder.mkdir()
    _truncated_png(folder / "cut.png")
    check_image_header(folder / "cut.png")  # the header is sound: only decoding finds it
    csv = folder / "study.csv"
    csv.write_text("path,label\ncut.png,1\n")
    with pytest.raises(DatasetError) as e:
        _embed(load_dataset("csv", csv), tmp_path / "cache", effnet)
    message = str(e.value)
    assert "cut.png" in message and "truncated" in message and "(row 'cut.png')" in message
    assert "fmcache datasets check csv --data" in message and "\n" not in message


# ---------------------------------------------------------------- `fmcache datasets check`


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_check_decodes_every_image_and_lists_the_unreadable(tmp_path, run_cli):
    folder = tmp_path / "study"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), 40 * i).save(folder / f"ok{i}.png")
    _truncated_png(folder / "cut.png")
    csv = folder / "study.csv"
    csv.write_text("path,label\nok0.png,0\ncut.png,1\nok1.png,0\nok2.png,1\n")
    code, out, _ = run_cli("datasets", "check", "csv", "--data", str(csv))
    lines = out.strip().splitlines()
    assert code == 1 and lines[-1] == "1 problem(s)"
    assert "files listed 4, missing 0, unreadable 1" in out
    assert "  problem: 1 of 4 images cannot be decoded (listed as unreadable below)" in out
    listed = [line for line in lines if line.startswith("  unreadable:")]
    assert len(listed) == 1 and "row 'cut.png'" in listed[0] and "truncated" in listed[0] and str(folder / "cut.png") in listed[0]


def test_check_caps_the_listing_and_counts_the_rest(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    n = SHOW_UNREADABLE + 3
    for i in range(n):
        (folder / f"x{i:02d}.png").write_text("not an image")
    Image.new("L", (8, 8)).save(folder / "fine.png")
    csv = folder / "study.csv"
    csv.write_text("path,label\nfine.png,0\n" + "".join(f"x{i:02d}.png,1\n" for i in range(n)))
    report = check_dataset("csv", csv, progress=True)  # the bar goes to stderr and leaves the report alone
    assert [row for row, _ in report.unreadable] == [f"x{i:02d}.png" for i in range(n)]
    lines = report.lines()
    assert sum(line.startswith("  unreadable: row ") for line in lines) == SHOW_UNREADABLE
    assert "  unreadable: ... and 3 more" in lines and f"{n} of {n + 1} images cannot be decoded" in report.problems[0]
    assert "unreadable" not in capsys.readouterr().out


# ---------------------------------------------------------------- the 8-bit rules


def test_minmax_rule_on_a_hand_computed_case():
    # (v - 100) / (1120 - 100) * 255: 0, 25, 50, 255
    np.testing.assert_array_equal(minmax_to_uint8(np.array([[100, 200], [300, 1120]], np.uint16)), [[0, 25], [50, 255]])
    np.testing.assert_array_equal(minmax_to_uint8(np.full((2, 3), 7, np.uint16)), np.zeros((2, 3), np.uint8))
    np.testing.assert_array_equal(minmax_to_uint8(np.array([np.nan, 0.0, 10.0, 5.0])), [0, 0, 255, 128])


def test_16_bit_png_is_stretched_not_clipped(tmp_path):
    stored = np.array([[100, 200], [300, 1120]], np.uint16)
    Image.fromarray(stored).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "a.png"), _rgb(np.array([[0, 25], [50, 255]], np.uint8)))
    # what PIL's own conversion would have given: everything from 255 up is white
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png").convert("L")), [[100, 200], [255, 255]])


def test_monochrome1_is_inverted(tmp_path):
    mono2 = _pixels(_ct(tmp_path / "m2.dcm"))
    mono1 = _pixels(_ct(tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1"))
    assert mono2.std() > 10
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_voi_lut_sequence_range_becomes_0_to_255(tmp_path):
    # a VOI LUT from stored value 128 on, 1024 entries on a square-root curve, between 300 and 3000
    first, n = 128, 1024
    lut = np.round(300 + 2700 * np.sqrt(np.arange(n) / (n - 1))).astype(np.uint16)
    item = DicomDataset()
    item.add_new(0x00283002, "US", [n, first, 16])  # LUT Descriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = _ct(tmp_path / "lut.dcm", RescaleSlope=None, RescaleIntercept=None, VOILUTSequence=Sequence([item]))
    stored = pydicom.dcmread(path).pixel_array.astype(np.int64)
    shown = lut[np.clip(stored - first, 0, n - 1)].astype(np.float64)
    expected = np.round((shown - 300) / (3000 - 300) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_pixels(path), _rgb(expected))


def test_rgb_dicom_keeps_its_colours():
    path = _testdata("SC_rgb_small_odd.dcm")
    np.testing.assert_array_equal(_pixels(path), pydicom.dcmread(path).pixel_array)


def test_palette_colour_dicom_goes_through_its_palette():
    path = _testdata("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    channels = []
    for colour in ("Red", "Green", "Blue"):
        entries, first, bits = ds[f"{colour}PaletteColorLookupTableDescriptor"].value
        assert bits == 16 and ds.file_meta.TransferSyntaxUID.is_little_endian
        lut = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, "<u2")
        channels.append(lut[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)])
    # 16-bit palette entries: 0..65535 becomes 0..255
    expected = np.round(np.stack(channels, axis=-1) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(_pixels(path), expected)


def test_dicom_is_recognised_without_its_name_or_its_preamble(tmp_path):
    reference = _pixels(_testdata("CT_small.dcm"))
    shutil.copy(_testdata("CT_small.dcm"), tmp_path / "IM0001")  # PACS exports often have no suffix
    np.testing.assert_array_equal(_pixels(tmp_path / "IM0001"), reference)
    bare = pydicom.dcmread(_testdata("CT_small.dcm"))
    del bare.file_meta
    bare.preamble = None
    bare.save_as(tmp_path / "bare.dcm", enforce_file_format=False)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    check_image_header(tmp_path / "bare.dcm")
    np.testing.assert_array_equal(_pixels(tmp_path / "bare.dcm"), reference)


def test_nifti_single_slices_are_laid_out_radiologically(tmp_path):
    rng = np.random.default_rng(2)
    # RAS storage, 2D: rows from anterior (largest y) down, columns from the patient's right (largest x)
    axial = rng.normal(size=(12, 9)).astype(np.float32)
    np.testing.assert_array_equal(_pixels(_nifti(tmp_path / "a.nii", axial, np.eye(4)))[..., 0], _minmax(axial.T[::-1, ::-1]))
    # one coronal slice (x, 1, z): rows from superior (largest z) down, columns from the patient's right
    coronal = rng.normal(size=(12, 1, 7)).astype(np.float32)
    expected = _minmax(coronal[:, 0, :].T[::-1, ::-1])
    np.testing.assert_array_equal(_pixels(_nifti(tmp_path / "c.nii.gz", coronal, np.eye(4)))[..., 0], expected)


# ---------------------------------------------------------------- refusals, each one clear error


def _refusal(path: Path, *fragments: str) -> None:
    for read in (check_image_header, open_image):
        with pytest.raises(DatasetError) as e:
            read(path)
        message = str(e.value)
        assert str(path) in message and "\n" not in message
        for fragment in fragments:
            assert fragment in message, message


def test_a_missing_codec_names_the_transfer_syntax_and_the_extra(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000

    # pydicom decodes JPEG 2000 here through Pillow; without any decoder plugin it could not
    decoder = get_decoder(JPEG2000)
    monkeypatch.setattr(decoder, "_available", {})
    path = _testdata("693_J2KI.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000
    _refusal(path, "JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)", "no decoder for it is installed", CODECS)


def test_jpeg_ls_without_its_codec_is_refused_with_the_install_line():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    _refusal(_testdata("MR_small_jpeg_ls_lossless.dcm"), "JPEG-LS Lossless Image Compression", CODECS)


def test_more_than_one_image_per_file_is_refused(tmp_path):
    _refusal(_testdata("examples_ybr_color.dcm"), "holds 30 frames")
    pages = [Image.new("L", (8, 8), v) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    _refusal(tmp_path / "stack.tif", "holds 3 pages")
    _nifti(tmp_path / "volume.nii.gz", np.zeros((8, 8, 4), np.float32), np.eye(4))
    _refusal(tmp_path / "volume.nii.gz", "(8, 8, 4)", "more than one slice")


def test_truncated_png_raises(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    _truncated_png(tmp_path / "cut.png")
    with pytest.raises(DatasetError, match="truncated"):
        open_image(tmp_path / "cut.png")


# ---------------------------------------------------------------- no warning leaks out


def test_the_users_dicom_reads_without_a_leaked_warning(tmp_path):
    # CT_small's preamble looks like a TIFF header: PIL's TIFF reader warns "Corrupt EXIF data"
    # and then gives up; under a raster name the file is still found to be DICOM
    shutil.copy(_testdata("CT_small.dcm"), tmp_path / "scan.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_image_header(tmp_path / "scan.tif")
        pixels = _pixels(tmp_path / "scan.tif")
        reference = _pixels(_testdata("CT_small.dcm"))
    assert caught == []
    np.testing.assert_array_equal(pixels, reference)


def test_pil_size_warnings_do_not_leak_and_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above this and refuses above twice it
    Image.new("L", (12, 12), 5).save(tmp_path / "big.png")
    Image.new("L", (15, 15), 5).save(tmp_path / "bomb.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _pixels(tmp_path / "big.png").shape == (12, 12, 3)
        _refusal(tmp_path / "bomb.png", "decompression bomb")
    assert caught == []
