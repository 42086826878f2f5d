"""Sensitive-attribute rules and patient-level splits against hand-computed expectations."""

from __future__ import annotations

import re

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


def test_a_rule_says_what_a_blank_became():
    rule = categorical({"M": "male", "F": "female"}, groups=("male", "female"))
    assert encode(rule, pd.Series(["M", "", None, " n/a "])).tolist() == [0, -1, -1, -1]
    assert "blank" in rule.description and rule.description.endswith("-> unknown")
    assert rule.description.startswith("M -> male, F -> female; blank")


def test_a_blank_spelling_cannot_be_mapped_to_a_group():
    with pytest.raises(ValueError, match="'NA' reads as a blank value"):
        categorical({"M": "male", "NA": "female"}, groups=("male", "female"))


def _every_rule():
    """Each adapter's rules (both group granularities where an option picks them) and one CSV rule of each kind."""
    from fmcache.datasets.adapters import csv_table, fairvlmed10k, gf3300
    from fmcache.datasets.registry import DATASETS

    rules = {f"{k}.{a}": r for k, spec in DATASETS.items() for a, r in spec.attributes.items()}
    rules |= {f"{m.__name__}.multi.{a}": r for m in (fairvlmed10k, gf3300) for a, r in m._rules("multi").items()}
    specs = {
        "sex": {"column": "Sex", "map": {"M": "male", "F": "female", "U": "unknown", "X": None}},
        "age": {"column": "Age", "threshold": 65},
        "race": {"column": "Race", "keyword": "White", "unknown": ["Refused", "Declined"]},
    }
    rules |= {f"csv.{a}": csv_table._rule(a, spec, "study.csv") for a, spec in specs.items()}
    return rules


def _group(rule, value):
    out = rule.assign(pd.Series([value], dtype=object)).iloc[0]
    return "unknown" if out is None or out != out else out


@pytest.mark.parametrize("name, rule", list(_every_rule().items()), ids=list(_every_rule()))
def test_every_rule_description_states_what_the_rule_does(name, rule):
    """Each clause of the description, checked against the rule applied: nothing it says is
    untrue, and what it does with blanks is said."""
    from fmcache.datasets.attributes import BLANK

    assert BLANK in rule.description
    for blank in ("", None, np.nan, " ", "NA", "n/a", "NULL", "None", "nan"):
        assert _group(rule, blank) == "unknown", (name, blank)
    clauses = rule.description.split("; ")
    dicom_ages = rule.description.startswith("years read from '039Y'-style strings: ")
    checked = 0
    for clause in clauses:
        clause = clause.removeprefix("years read from '039Y'-style strings: ")
        if clause == BLANK:
            continue
        if clause.startswith("0 -> unknown"):  # CheXpert's placeholder age
            assert _group(rule, "0") == _group(rule, 0.0) == "unknown", name
            checked += 1
            continue
        if m := re.fullmatch(r"(\S+) if >= ([\d.]+), else (\S+)", clause):
            high, cut, low = m[1], float(m[2]), m[3]
            years = {True: f"{int(cut):03d}Y", False: f"{int(cut) - 1:03d}Y"} if dicom_ages else {True: cut, False: cut - 1}
            assert (_group(rule, years[True]), _group(rule, years[False])) == (high, low), name
        elif m := re.fullmatch(r"(\S+) if < ([\d.]+)", clause):  # numeric classes (bins): the lowest
            assert _group(rule, float(m[2]) - 0.01) == m[1] and _group(rule, m[2]) != m[1], name
        elif m := re.fullmatch(r"(\S+) if ([\d.]+) to < ([\d.]+)", clause):
            lo, hi = float(m[2]), float(m[3])
            assert _group(rule, lo) == _group(rule, hi - 0.01) == m[1] != _group(rule, hi) != _group(rule, lo - 0.01), name
        elif m := re.fullmatch(r"(\S+) if >= ([\d.]+)", clause):  # the highest
            assert _group(rule, m[2]) == m[1] != _group(rule, float(m[2]) - 0.01), name
        elif m := re.fullmatch(r"(\S+) if the value contains '(.+)' in any case, else (\S+)", clause):
            word = m[2]
            assert _group(rule, f"x {word.lower()} y") == m[1] and _group(rule, word.upper()) == m[1], name
            assert _group(rule, "something else") == m[3], name
        elif " -> " in clause.rsplit(" -> ", 1)[0]:  # a mapping: "A -> a, B -> b"
            for pair in clause.split(", "):
                raw, group = pair.split(" -> ")
                assert _group(rule, raw) == group, (name, pair)
        else:  # spellings that are unknown: "A, B -> unknown" (keyword rules: in any case)
            spellings, target = clause.rsplit(" -> ", 1)
            assert target == "unknown", (name, clause)
            any_case = spellings.endswith(" in any case")
            for raw in spellings.removesuffix(" in any case").split(", "):
                assert _group(rule, raw) == "unknown", (name, raw)
                if any_case:
                    assert _group(rule, raw.upper()) == "unknown", (name, raw)
        checked += 1
    assert checked >= 1, name


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
