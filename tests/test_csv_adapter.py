"""The generic CSV adapter: options, YAML config, image paths and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fmcache.datasets
from fmcache.errors import DatasetError


from fmcache.datasets import load_dataset
from fmcache.datasets.adapters import csv_table

RULES = "sex=Sex:M->male,F->female,U->unknown; age=Age:threshold 65"
CLI = {"subject_column": "patient", "labels": "pneumonia,effusion", "attributes": RULES}
YAML = """\
subject_column: patient
labels: [pneumonia, effusion]
attributes:
  sex: {column: Sex, map: {M: male, F: female}, unknown: [U]}
  age: {column: Age, threshold: 65}
"""


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (24, 20), value).save(path)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A small study: images beside the CSV, one absolute path, one patient with two images."""
    for i in range(5):
        _image(tmp_path / "images" / f"{i}.png", 40 * i)
    outside = tmp_path / "elsewhere" / "x.png"
    _image(outside, 250)
    rows = [
        "path,patient,pneumonia,effusion,Sex,Age,Race",
        "images/0.png,P1,1,0,F,71,White",
        "images/1.png,P1,0,yes,F,71.0,White",
        "images/2.png,P2,,False,U,,Refused",
        "images/3.png,P3,true,No,M,30,Black",
        "images/4.png,P4,0,,M,65,WHITE - RUSSIAN",
        f"{outside},P5,1,1, M ,80,Asian",
    ]
    path = tmp_path / "study" / "table.csv"
    path.parent.mkdir()
    path.write_text("\n".join(rows) + "\n")
    # the CSV's own folder holds the images: move them beside it
    (tmp_path / "images").rename(path.parent / "images")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _error(csv: Path, **options: str) -> str:
    with pytest.raises(DatasetError) as e:
        load_dataset("csv", csv, options=options)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_cli_options_and_yaml_config_give_the_same_table(study: Path):
    cli = load_dataset("csv", study, options=CLI)
    config = _write(study.parent / "study.yaml", YAML)
    yaml = load_dataset("csv", study, options={"config": str(config)})
    pd.testing.assert_frame_equal(cli.table, yaml.table)
    assert cli.group_attrs()["attributes"] == yaml.group_attrs()["attributes"]
    assert cli.name == yaml.name == "table"


def test_table_contents(study: Path):
    ds = load_dataset("csv", study, options=CLI)
    t = ds.table
    assert t["id"].tolist()[:2] == ["images/0.png", "images/1.png"]  # default id: the path as written
    assert t["label/pneumonia"].tolist() == [1, 0, -1, 1, 0, 1]
    assert t["label/effusion"].tolist() == [0, 1, 0, 0, -1, 1]
    assert t["sa/sex"].tolist() == [1, 1, -1, 0, 0, 0]
    assert t["sa/age"].tolist() == [1, 1, -1, 0, 1, 1]
    assert t["sa_raw/sex"].tolist()[-1] == "M"
    assert (t.groupby("subject")["split"].nunique() == 1).all()
    attrs = ds.group_attrs()
    assert attrs["task"] == "multilabel" and attrs["label_names"] == ["pneumonia", "effusion"]
    assert attrs["attributes"]["sex"]["groups"] == ["male", "female"]
    assert "Sex" in attrs["attributes"]["sex"]["source"] and "table.csv" in attrs["attributes"]["sex"]["source"]
    assert attrs["attributes"]["age"]["rule"].startswith("old if >= 65")


def test_defaults_one_subject_per_image(study: Path):
    ds = load_dataset("csv", study, options={"labels": "pneumonia"})
    assert (ds.table["subject"] == ds.table["id"]).all()
    assert ds.attribute_names == [] and ds.group_attrs()["task"] == "binary"


def test_command_line_overrides_the_config(study: Path):
    config = _write(study.parent / "study.yaml", YAML + "name: from_yaml\n")
    ds = load_dataset("csv", study, options={"config": str(config), "name": "from_cli", "labels": "effusion"})
    assert ds.name == "from_cli" and ds.label_names == ["effusion"]
    assert ds.attribute_names == ["sex", "age"]  # kept from the config


def test_yaml_keyword_rule_and_custom_groups(study: Path):
    config = _write(study.parent / "race.yaml", """\
labels: pneumonia
id_column: path
attributes:
  race: {column: Race, keyword: white, groups: [white, non-white], unknown: [Refused]}
  age: {column: Age, threshold: 70, groups: [under70, over70]}
""")
    ds = load_dataset("csv", study, options={"config": str(config)})
    assert ds.table["sa/race"].tolist() == [0, 0, -1, 1, 0, 1]
    assert ds.table["sa/age"].tolist() == [1, 1, -1, 0, 0, 1]
    assert ds.group_attrs()["attributes"]["age"]["groups"] == ["under70", "over70"]


def test_cli_threshold_with_groups(study: Path):
    ds = load_dataset("csv", study, options={"labels": "pneumonia", "attributes": "age=Age:threshold 70 a,b"})
    assert ds.group_attrs()["attributes"]["age"]["groups"] == ["a", "b"]


def test_relative_and_absolute_image_paths_load(study: Path):
    ds = load_dataset("csv", study, options=CLI)
    first, last = ds.image(1), ds.image(5)
    assert first.mode == "RGB" and first.size == (24, 20)
    assert np.asarray(first)[0, 0, 0] == 40 and np.asarray(last)[0, 0, 0] == 250
    assert Path(ds.table["path"].iloc[0]).is_absolute()


def test_image_root_option(study: Path, tmp_path: Path):
    (tmp_path / "moved").mkdir()
    (study.parent / "images").rename(tmp_path / "moved" / "images")
    with pytest.raises(DatasetError, match="2.png"):
        load_dataset("csv", study, options={"labels": "pneumonia"}).image(2)
    absolute = load_dataset("csv", study, options={"labels": "pneumonia", "image_root": str(tmp_path / "moved")})
    assert np.asarray(absolute.image(2))[0, 0, 0] == 80
    relative = load_dataset("csv", study, options={"labels": "pneumonia", "image_root": "../moved"})
    assert np.asarray(relative.image(2))[0, 0, 0] == 80
    assert np.asarray(relative.image(5))[0, 0, 0] == 250  # absolute paths ignore image_root


def test_missing_image_file_is_named_when_loaded(study: Path):
    (study.parent / "images" / "3.png").unlink()
    ds = load_dataset("csv", study, options=CLI)
    with pytest.raises(DatasetError, match="3.png"):
        ds.image(3)


def test_missing_csv(tmp_path: Path):
    assert "nothere.csv" in _error(tmp_path / "nothere.csv", labels="x")
    with pytest.raises(DatasetError, match="must name a CSV file"):
        csv_table.read(tmp_path, {})


def test_missing_column_names_it_the_file_and_the_columns(study: Path):
    message = _error(study, labels="pneumonia", subject_column="Patient")
    assert "'Patient'" in message and str(study) in message and "available columns: path, patient" in message
    assert "subject_column" in message
    assert "'Gender'" in _error(study, labels="pneumonia", attributes="sex=Gender:M->male,F->female")
    assert "'label'" in _error(study)  # labels default to a column named label


def test_bad_label_value_names_column_and_value(study: Path):
    study.write_text(study.read_text().replace("images/3.png,P3,true", "images/3.png,P3,maybe"))
    message = _error(study, labels="pneumonia")
    assert "'pneumonia'" in message and "'maybe'" in message and "table.csv" in message


def test_unexpected_attribute_value_is_named(study: Path):
    message = _error(study, labels="pneumonia", attributes="sex=Sex:M->male,F->female")
    assert "'U'" in message and "'Sex'" in message and "sex" in message


def test_out_of_range_age_is_named(study: Path):
    study.write_text(study.read_text().replace(",30,", ",300,"))
    assert "'300'" in _error(study, labels="pneumonia", attributes="age=Age:threshold 65")


def test_unparseable_yaml(study: Path):
    config = _write(study.parent / "bad.yaml", "labels: [pneumonia\nattributes: {\n")
    message = _error(study, config=str(config))
    assert "bad.yaml" in message and "YAML" in message


@pytest.mark.parametrize("body, fragment", [
    ("- just\n- a list\n", "mapping"),
    ("lables: [pneumonia]\n", "lables"),
    ("labels: pneumonia\nattributes:\n  sex: {column: Sex}\n", "sex"),
    ("labels: pneumonia\nattributes:\n  sex: {column: Sex, map: {M: male}, threshold: 3}\n", "exactly one"),
    ("labels: pneumonia\nattributes:\n  age: {column: Age, threshold: old}\n", "number"),
])
def test_bad_yaml_content(study: Path, body: str, fragment: str):
    assert fragment in _error(study, config=str(_write(study.parent / "c.yaml", body)))


def test_missing_config_file(study: Path):
    assert "nope.yaml" in _error(study, config=str(study.parent / "nope.yaml"))


@pytest.mark.parametrize("rule", ["sex", "sex=Sex", "sex=Sex:M=male", "=Sex:M->male", "age=Age:threshold", "sex=Sex:M->"])
def test_bad_rule_syntax(study: Path, rule: str):
    message = _error(study, labels="pneumonia", attributes=rule)
    assert repr(rule) in message and "NAME=COLUMN" in message


def test_a_blank_spelling_mapped_to_a_group_is_refused(study: Path):
    message = _error(study, labels="pneumonia", attributes="sex=Sex:M->male,F->female,N/A->female")
    assert "'N/A'" in message and "blank" in message and "remove it from the map" in message


def test_the_recorded_rule_says_what_blanks_became(study: Path):
    # row 2's Age is empty: it is unknown, and the recorded rule says so, for each kind of rule
    ds = load_dataset("csv", study, options=CLI)
    assert ds.table["sa/age"].tolist()[2] == -1
    for attr in ds.attribute_names:
        assert "blank" in ds.group_attrs()["attributes"][attr]["rule"]


def test_unknown_option(study: Path):
    assert "colour" in _error(study, colour="red")


def test_duplicate_ids_and_blank_paths(study: Path):
    assert "'P1'" in _error(study, labels="pneumonia", id_column="patient")
    text = study.read_text()
    study.write_text(text.replace("images/2.png,P2", "images/2.png,"))
    assert "blank patient id" in _error(study, labels="pneumonia", subject_column="patient")
    study.write_text(text.replace("images/2.png", ""))
    assert "blank image path" in _error(study, labels="pneumonia")


def test_byte_order_mark_and_padded_header(study: Path):
    study.write_bytes(b"\xef\xbb\xbf" + study.read_bytes().replace(b",Sex,", b", Sex ,"))
    ds = load_dataset("csv", study, options=CLI)
    assert ds.table["sa/sex"].tolist() == [1, 1, -1, 0, 0, 0]


def test_bad_name(study: Path):
    assert "name" in _error(study, labels="pneumonia", name="my data/1")


def test_layout_teaches_the_format():
    spec = fmcache.datasets.get_dataset("csv")
    assert spec.attributes == {} and spec.needs_data
    for fragment in ("path,patient,", "fmcache ", "-o labels=", "attributes:", "threshold: 65", "map: {"):
        assert fragment in spec.layout
    assert "default: the sample id" in spec.options["subject_column"]
    # what is read and how wider intensities become 8 bits
    for fragment in ("-o subject_column=patient", "every image is its own patient", "DICOM", "NIfTI", "16-bit",
                     "min..max", "WindowCenter", "MONOCHROME1", "pip install 'fmcache[dicom]'", "fmcache datasets check csv"):
        assert fragment in spec.layout, fragment
