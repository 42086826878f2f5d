"""The user's own data: one CSV file with a row per image.

The columns to use, the labels and the sensitive-attribute rules all come from options
(``-o key=value`` on the command line, or a YAML file named by ``-o config=...``), so this
entry's ``attributes`` mapping is empty: the rules built here travel with the raw table as
``RawTable.attribute_rules`` and the shared machinery binarises and records those.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.attributes import categorical, encode, is_blank, keyword, threshold
from fmcache.datasets.spec import AttributeRule, DatasetSpec, Options, RawTable
from fmcache.errors import DatasetError

KEY = "csv"

OPTIONS = {
    "config": "YAML file holding any of these options in structured form; an option given with -o "
    "replaces that entry of the file",
    "name": "cache name of the dataset (default: the CSV file name without .csv)",
    "image_column": "column with the image paths, relative to the CSV's folder or absolute (default: path)",
    "image_root": "folder that relative image paths start from; itself relative to the CSV's folder unless absolute (default: the CSV's folder)",
    "id_column": "column with a unique sample id (default: the image path as written in the CSV)",
    "subject_column": "column with the patient id, so that splits keep a patient's images together "
    "(default: the sample id, i.e. every image is its own patient)",
    "labels": "comma-separated label columns holding 0/1, true/false or yes/no; blank = unknown (default: label)",
    "attributes": "semicolon-separated rules NAME=COLUMN:RULE, RULE one of RAW->GROUP,... (GROUP 'unknown' "
    "marks unknown spellings), 'threshold N [LOW,HIGH]' or 'keyword WORD [YES,NO]'; "
    "e.g. 'sex=Sex:M->male,F->female,U->unknown; age=Age:threshold 65'",
}

LAYOUT = """\
--data names one CSV file with a row per image: an image path, 0/1 label
columns and raw attribute columns.
Example CSV header (image paths relative to the CSV's folder, or absolute):
    path,patient,pneumonia,effusion,Sex,Age
    images/0001.png,P001,1,0,F,71
Example command line:
    fmcache embed --model dinov2 --dataset csv --data study.csv \\
        -o subject_column=patient -o labels=pneumonia,effusion \\
        -o "attributes=sex=Sex:M->male,F->female; age=Age:threshold 65"
Without -o subject_column=... every image is its own patient, so one patient's
images can land in both train and test.
Images: PNG, JPEG, TIFF, BMP and the rest PIL reads; DICOM (.dcm, .dicom, or a
file with the DICM marker); NIfTI (.nii, .nii.gz) holding one slice, laid out
as radiologists view it. One 2D image per row: multi-frame DICOM, multi-page
TIFF and NIfTI volumes are refused.
8-bit images keep their values. 16-bit and float grayscale: the image's own
min..max becomes 0..255. DICOM: RescaleSlope/Intercept (or the modality LUT),
then the first window (WindowCenter/Width) or VOI LUT becomes 0..255, else the
image's min..max; MONOCHROME1 is inverted. Compressed DICOM (JPEG, JPEG-LS,
JPEG 2000) needs: pip install 'fmcache[dicom]'.
Check that every file decodes before a long run:
    fmcache datasets check csv --data study.csv -o ...
Example YAML (--dataset-config study.yaml or -o config=study.yaml; an option
given with -o replaces that entry of the file):
    name: study
    subject_column: patient
    labels: [pneumonia, effusion]
    attributes:
      sex: {column: Sex, map: {M: male, F: female}, unknown: [U, ""]}
      age: {column: Age, threshold: 65, groups: [young, old]}
      race: {column: Race, keyword: white, groups: [white, non-white],
             unknown: [Refused]}
Labels: 0/1, true/false, yes/no (any case); blank = unknown. Attribute values
not named by their rule are an error; quote YAML keys that would read as
numbers or booleans ("1", "yes"). A threshold rule refuses values outside
[0, 130] unless its YAML form gives valid: [low, high].
"""

_LABEL_VALUES = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "0": 0, "0.0": 0, "false": 0, "no": 0}
_BLANK = {"", "nan", "na", "n/a", "none", "null"}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RULE_KEYS = {"column", "map", "unknown", "threshold", "keyword", "groups", "valid"}


def _fail(message: str) -> DatasetError:
    return DatasetError(f"{KEY}: {message}")


# --- options: YAML config, then command-line overrides -------------------------------------


def _load_config(text: str) -> dict[str, Any]:
    import yaml

    path = Path(text).expanduser()
    if not path.is_file():
        raise _fail(f"config file not found: {path} (fix -o config=PATH)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = getattr(e, "problem", None) or (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise _fail(f"cannot parse YAML config {path}{at}: {first}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(f"YAML config {path} must be a mapping of option: value, got a {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - (set(OPTIONS) - {"config"}))
    if unknown:
        known = ", ".join(sorted(set(OPTIONS) - {"config"}))
        raise _fail(f"unknown key(s) {', '.join(unknown)} in YAML config {path} (known: {known})")
    return {str(k): v for k, v in data.items()}


def _settings(options: Options) -> dict[str, Any]:
    """The YAML config's entries with the command-line options laid over them."""
    merged = _load_config(options["config"]) if options.get("config") else {}
    merged.update({k: v for k, v in options.items() if k != "config"})
    return merged


def _label_columns(value: Any) -> list[str]:
    if isinstance(value, str):
        cols = [c.strip() for c in value.split(",")]
    elif isinstance(value, (list, tuple)):
        cols = [str(c).strip() for c in value]
    else:
        raise _fail(f"labels must be a list of column names, got {value!r} (e.g. -o labels=pneumonia,effusion)")
    cols = [c for c in cols if c]
    if not cols:
        raise _fail("labels names no column (e.g. -o labels=pneumonia,effusion)")
    return cols


# --- attribute rules ---------------------------------------------------------------------------


def _parse_rule_text(entry: str) -> tuple[str, dict[str, Any]]:
    """``NAME=COLUMN:RULE`` -> (name, the same rule in its YAML form)."""
    syntax = (f"bad attribute rule {entry!r}: expected NAME=COLUMN:RAW->GROUP,... or NAME=COLUMN:threshold N "
              f"or NAME=COLUMN:keyword WORD (e.g. 'sex=Sex:M->male,F->female,U->unknown')")
    name, eq, rest = entry.partition("=")
    column, colon, rule = rest.partition(":")
    name, column, rule = name.strip(), column.strip(), rule.strip()
    if not (eq and colon and name and column and rule):
        raise _fail(syntax)
    words = rule.split()
    if words[0].lower() in ("threshold", "keyword"):
        if len(words) not in (2, 3):
            raise _fail(syntax)
        out: dict[str, Any] = {"column": column, words[0].lower(): words[1]}
        if len(words) == 3:
            out["groups"] = [g.strip() for g in words[2].split(",")]
        return name, out
    mapping: dict[str, str] = {}
    for pair in rule.split(","):
        raw, arrow, group = pair.partition("->")
        if not arrow or not group.strip():
            raise _fail(syntax)
        mapping[raw.strip()] = group.strip()
    return name, {"column": column, "map": mapping}


def _parse_rules_text(text: str) -> dict[str, dict[str, Any]]:
    rules = dict(_parse_rule_text(e) for e in text.split(";") if e.strip())
    if not rules:
        raise _fail(f"attributes {text!r} names no rule (e.g. -o 'attributes=sex=Sex:M->male,F->female')")
    return rules


def _groups(name: str, spec: Mapping[str, Any], n: int | None) -> tuple[str, ...] | None:
    groups = spec.get("groups")
    if groups is None:
        return None
    if isinstance(groups, str):
        groups = groups.split(",")
    groups = tuple(str(g).strip() for g in groups)
    if n is not None and len(groups) != n:
        raise _fail(f"attribute {name!r}: groups must name {n} groups, got {list(groups)}")
    return groups


def _number(name: str, key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _fail(f"attribute {name!r}: {key} must be a number, got {value!r}") from None


def _categorical_rule(name: str, spec: Mapping[str, Any], source: str) -> AttributeRule:
    if not isinstance(spec["map"], Mapping) or not spec["map"]:
        raise _fail(f"attribute {name!r}: map must be a non-empty mapping raw value -> group")
    unknown = spec.get("unknown") or []
    unknown = [unknown] if isinstance(unknown, str) else list(unknown)
    mapping: dict[str, str] = {}
    for raw, group in spec["map"].items():
        # "unknown" (or an empty YAML value) as a target lists a spelling that means unknown
        if group is None or str(group).strip().lower() == "unknown":
            unknown.append(str(raw))
        else:
            mapping[str(raw)] = str(group).strip()
    if not mapping:
        raise _fail(f"attribute {name!r}: map assigns no value to a group")
    blank = [raw for raw in mapping if is_blank(raw)]
    if blank:
        raise _fail(f"attribute {name!r}: {blank[0]!r} reads as a blank cell, which is always unknown, so it cannot "
                    f"map to group {mapping[blank[0]]!r}; remove it from the map (or correct the CSV's spelling)")
    groups = _groups(name, spec, None) or tuple(dict.fromkeys(mapping.values()))
    missing = sorted(set(mapping.values()) - set(groups))
    if missing:
        raise _fail(f"attribute {name!r}: map targets {missing} are not among groups {list(groups)}")
    return categorical(mapping, groups=groups, unknown=[str(u) for u in unknown], source=source)


def _rule(name: str, spec: Any, source: str) -> AttributeRule:
    """An AttributeRule from the YAML form {column, map | threshold | keyword, unknown, groups, valid}."""
    if not isinstance(spec, Mapping) or "column" not in spec:
        raise _fail(f"attribute {name!r}: expected a mapping with a column and one of map, threshold, keyword")
    extra = sorted(set(map(str, spec)) - _RULE_KEYS)
    kinds = [k for k in ("map", "threshold", "keyword") if k in spec]
    if extra or len(kinds) != 1:
        why = f"unknown key(s) {extra}" if extra else "exactly one of map, threshold, keyword is needed"
        raise _fail(f"attribute {name!r}: {why} (keys: {', '.join(sorted(_RULE_KEYS))})")
    if kinds[0] == "map":
        return _categorical_rule(name, spec, source)
    if kinds[0] == "threshold":
        valid = spec.get("valid", (0.0, 130.0))
        if not isinstance(valid, (list, tuple)) or len(valid) != 2:
            raise _fail(f"attribute {name!r}: valid must be [low, high], got {valid!r}")
        return threshold(
            _number(name, "threshold", spec["threshold"]),
            groups=_groups(name, spec, 2) or ("young", "old"),
            source=source,
            valid=(_number(name, "valid", valid[0]), _number(name, "valid", valid[1])),
        )
    word = str(spec["keyword"])
    unknown = spec.get("unknown") or []
    return keyword(word, groups=_groups(name, spec, 2) or (word, f"non-{word}"),
                   unknown=[unknown] if isinstance(unknown, str) else [str(u) for u in unknown], source=source)


def _attribute_specs(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if isinstance(value, str):
        return _parse_rules_text(value)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise _fail(f"attributes must be a mapping of attribute -> rule, got {value!r}")


# --- the table ---------------------------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise _fail(f"--data must name a CSV file, got the folder {path}")
    if not path.is_file():
        raise _fail(f"CSV file not found: {path} (pass --data PATH/TO/FILE.csv)")
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise _fail(f"cannot parse CSV file {path}: {first} (save it as comma-separated UTF-8 text)") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _column(df: pd.DataFrame, column: str, option: str, path: Path) -> pd.Series:
    if column not in df.columns:
        raise _fail(
            f"column {column!r} (option {option}) not in {path}; available columns: {', '.join(df.columns)}; "
            f"fix -o {option}=... or the CSV header"
        )
    return df[column].map(str.strip)


def _label(series: pd.Series, column: str, path: Path) -> np.ndarray:
    out = np.empty(len(series), dtype=np.int8)
    for i, v in enumerate(series):
        low = v.lower()
        if low in _BLANK:
            out[i] = -1
        elif low in _LABEL_VALUES:
            out[i] = _LABEL_VALUES[low]
        else:
            raise _fail(
                f"label column {column!r} in {path} has value {v!r} (line {i + 2}); "
                f"use 0/1, true/false, yes/no, or blank for unknown"
            )
    return out


def _no_blanks(values: pd.Series, what: str, column: str, path: Path) -> None:
    blank = np.flatnonzero(values.to_numpy() == "")
    if len(blank):
        raise _fail(f"blank {what} in column {column!r} of {path} (line {blank[0] + 2}); every row needs one")


def _image_paths(paths: pd.Series, base: Path) -> list[str]:
    return [str(p if p.is_absolute() else base / p) for p in (Path(v).expanduser() for v in paths)]


def _unique_ids(ids: pd.Series, column: str, path: Path) -> None:
    _no_blanks(ids, "id", column, path)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise _fail(f"id {dup.iloc[0]!r} occurs more than once in column {column!r} of {path}; "
                    f"ids must be unique (choose another -o id_column=...)")


def _check_values(name: str, rule: AttributeRule, values: pd.Series) -> None:
    try:
        encode(rule, values)
    except ValueError as e:
        raise _fail(f"unexpected {name} value {e.args[0]!r} in {rule.source} (rule: {rule.description}); "
                    f"add it to the rule (a group, or unknown) or correct the CSV") from None


def _samples(df: pd.DataFrame, s: Mapping[str, Any], path: Path) -> tuple[pd.DataFrame, Path]:
    """id, subject and absolute image path of every row, and the folder relative paths start from."""
    image_col = str(s.get("image_column") or "path")
    images = _column(df, image_col, "image_column", path)
    _no_blanks(images, "image path", image_col, path)
    base = Path(str(s["image_root"])).expanduser() if s.get("image_root") else path.parent
    base = base if base.is_absolute() else path.parent / base
    id_col = s.get("id_column")
    ids = _column(df, str(id_col), "id_column", path) if id_col else images
    _unique_ids(ids, str(id_col or image_col), path)
    subj_col = s.get("subject_column")
    subjects = _column(df, str(subj_col), "subject_column", path) if subj_col else ids
    # blank subjects would silently become one patient spanning the whole study
    _no_blanks(subjects, "patient id", str(subj_col or id_col or image_col), path)
    raw = pd.DataFrame({"id": ids.to_numpy(), "subject": subjects.to_numpy(), "path": _image_paths(images, base)})
    return raw, base


def _add_attributes(raw: pd.DataFrame, df: pd.DataFrame, value: Any, path: Path) -> dict[str, AttributeRule]:
    """Add ``raw/<name>`` columns for the rules in ``value``, checked against every row."""
    rules: dict[str, AttributeRule] = {}
    for name, spec in _attribute_specs(value).items():
        column = str(spec.get("column", "")) if isinstance(spec, Mapping) else ""
        rule = _rule(name, spec, f"{path}, column {column!r}")
        values = _column(df, column, "attributes", path)
        _check_values(name, rule, values)
        rules[name] = rule
        raw[f"raw/{name}"] = values.to_numpy()
    return rules


def read(root: Path, options: Options) -> RawTable:
    """Read the CSV named by ``--data`` into the raw table, with the rules the options give.

    Parameters
    ----------
    root
        The CSV file.
    options
        Command-line options (strings); ``config`` names a YAML file whose entries they override.

    Returns
    -------
    RawTable
        The raw table, with ``attribute_rules`` holding the rules to binarise with.
    """
    s = _settings(options)
    path = Path(root).expanduser().absolute()
    df = _read_csv(path)
    raw, base = _samples(df, s, path)
    labels = _label_columns(s.get("labels", "label"))
    for col in labels:
        raw[f"label/{col}"] = _label(_column(df, col, "labels", path), col, path)
    rules = _add_attributes(raw, df, s.get("attributes"), path)
    name = str(s.get("name") or path.stem)
    if not _NAME_OK.match(name):
        raise _fail(f"dataset name {name!r} must be letters, digits, '_', '.' or '-' (set -o name=...)")
    return RawTable(
        raw,
        name=name,
        task="binary" if len(labels) == 1 else "multilabel",
        group_attrs={"csv_file": str(path), "image_root": str(base)},
        attribute_rules=rules,
    )


SPEC = DatasetSpec(
    key=KEY,
    title="Your own data from a CSV file",
    modality="any 2D images",
    version="1",
    read=read,
    labels=(),
    task="binary",
    attributes={},  # rules come per call from the options: RawTable.attribute_rules
    layout=LAYOUT,
    obtain="your own data: write a CSV with one row per image (see the layout)",
    options=OPTIONS,
)
