"""Sensitive-attribute rules and patient-level splits against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmcache.datasets.attributes import categorical, encode, keyword, threshold
from fmcache.datasets.splits import patient_split

SEX = categorical({"M": "male", "F": "female"}, groups=("male", "female"), unknown=("U", "Unknown"))


def test_categorical_maps_spellings_and_unknowns():
    raw = pd.Series(["M", "F", " F ", "U", "Unknown", "", None, np.nan, "nan"])
    assert encode(SEX, raw).tolist() == [0, 1, 1, -1, -1, -1, -1, -1, -1]


def test_categorical_works_on_string_dtype_columns():
    raw = pd.Series(["M", None, "F"], dtype="string")
    assert encode(SEX, raw).tolist() == [0, -1, 1]


def test_categorical_unexpected_value_is_named():
    with pytest.raises(ValueError) as e:
        encode(SEX, pd.Series(["M", "X", "F"]))
    assert e.value.args[0] == "X"


def test_categorical_mapping_outside_groups_is_refused():
    with pytest.raises(ValueError, match="other"):
        categorical({"M": "male", "O": "other"}, groups=("male", "female"))


def test_categorical_records_its_rule():
    assert SEX.groups == ("male", "female")
    assert "M -> male" in SEX.description and "U" in SEX.description


def test_threshold_parses_numbers_as_files_spell_them():
    rule = threshold(60)
    raw = pd.Series(["80.0", "60", 59.9, 60.0, "  45 ", "", None, np.nan])
    assert encode(rule, raw).tolist() == [1, 1, 0, 1, 0, -1, -1, -1]
    assert rule.groups == ("young", "old")


def test_threshold_float_column_with_missing_values():
    assert encode(threshold(60), pd.Series([61.0, np.nan, 20.0])).tolist() == [1, -1, 0]


@pytest.mark.parametrize("bad", ["-3", "131", "abc", "inf"])
def test_threshold_out_of_range_or_non_numeric_is_named(bad):
    with pytest.raises(ValueError) as e:
        encode(threshold(60), pd.Series(["70", bad]))
    assert e.value.args[0] == bad


def test_threshold_custom_groups_and_range():
    rule = threshold(30, groups=("lean", "obese"), valid=(10, 80))
    assert encode(rule, pd.Series(["29.9", "30", "75"])).tolist() == [0, 1, 1]
    with pytest.raises(ValueError):
        encode(rule, pd.Series(["95"]))


def test_keyword_with_unknown_list():
    rule = keyword("white", groups=("white", "non-white"), unknown=("Refused", "UNABLE TO OBTAIN"))
    raw = pd.Series(["White", "WHITE - RUSSIAN", "Black", "Asian", "refused", "Unable to obtain", "", None])
    assert encode(rule, raw).tolist() == [0, 0, 1, 1, -1, -1, -1, -1]


# --- patient_split -------------------------------------------------------------------------------


def _subjects(n_subjects: int = 400, seed: int = 1) -> pd.DataFrame:
    """1-4 rows per subject; label and group are per subject, as in a real cohort."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        label, group = int(rng.random() < 0.3), int(rng.integers(-1, 2))
        rows += [{"subject": f"s{s}", "label": label, "group": group}] * int(rng.integers(1, 5))
    return pd.DataFrame(rows)


def test_no_subject_on_two_sides():
    df = _subjects()
    split = patient_split(df["subject"], df["label"] * 10 + df["group"], seed=3)
    assert (pd.Series(split).groupby(df["subject"]).nunique() == 1).all()
    assert set(np.unique(split)) == {0, 1, 2}


def test_fractions_roughly_respected():
    df = _subjects()
    split = patient_split(df["subject"], df["label"] * 10 + df["group"], fractions=(0.6, 0.2, 0.2), seed=0)
    per_subject = pd.Series(split).groupby(df["subject"]).first()
    share = np.bincount(per_subject, minlength=3) / len(per_subject)
    assert np.allclose(share, (0.6, 0.2, 0.2), atol=0.02)


def test_many_small_strata_still_fill_every_split():
    # two subjects per stratum: rounding each stratum alone would leave test empty
    subjects = np.arange(200).astype(str)
    split = patient_split(subjects, np.repeat(np.arange(100), 2), seed=0)
    assert np.bincount(split, minlength=3).tolist() == [140, 20, 40]


def test_stratification_keeps_label_and_group_mix():
    df = _subjects(1000)
    split = patient_split(df["subject"], df["label"] * 10 + df["group"], seed=0)
    subj = df.assign(split=split).drop_duplicates("subject")
    for side in (0, 1, 2):
        part = subj[subj["split"] == side]
        assert abs(part["label"].mean() - subj["label"].mean()) < 0.03
        for g in (-1, 0, 1):
            assert abs((part["group"] == g).mean() - (subj["group"] == g).mean()) < 0.03


def test_seeded_and_deterministic():
    df = _subjects()
    strata = df["label"] * 10 + df["group"]
    a = patient_split(df["subject"], strata, seed=7)
    assert np.array_equal(a, patient_split(df["subject"], strata, seed=7))
    assert not np.array_equal(a, patient_split(df["subject"], strata, seed=8))
    assert a.dtype == np.int8


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        patient_split(["a", "b"], fractions=(0.5, 0.4, 0.3))
