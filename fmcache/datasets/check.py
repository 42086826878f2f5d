"""Validate a user's copy of a release: can it be read, are its files there, what does it hold."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from fmcache.datasets.registry import get_dataset, load_dataset
from fmcache.datasets.splits import SPLIT_NAMES
from fmcache.errors import DatasetError

SHOW_MISSING = 5  # names listed when files are missing; the count says how many in all
SHOW_UNREADABLE = 20  # unreadable files listed, each with its reason; the count says how many in all


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``ok`` is True when ``problems`` is empty.

    ``label_counts`` maps each label to {value: rows} (-1 = unknown); ``group_counts`` maps
    each attribute to {group name: rows}, "unknown" included.
    """

    key: str
    root: Path | None
    rows: int = 0
    subjects: int = 0
    files: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (row id, why), in row order
    bad_masks: list[tuple[str, str]] = field(default_factory=list)  # (row id, why): segmentation only
    mask_classes: tuple[str, ...] = ()
    split_counts: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, dict[int, int]] = field(default_factory=dict)
    group_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The report as short lines of text."""
        out = [f"{self.key} at {self.root}"]
        if self.rows:
            out.append(f"  rows {self.rows}, subjects {self.subjects}, files listed {self.files}, missing {len(self.missing)}, "
                       f"unreadable {len(self.unreadable)}")
            out.append("  split: " + ", ".join(f"{k} {n}" for k, n in self.split_counts.items()))
            for name, counts in self.label_counts.items():
                out.append(f"  label {name}: " + ", ".join(f"{'unknown' if v == -1 else v} {n}" for v, n in counts.items()))
            for name, counts in self.group_counts.items():
                out.append(f"  {name}: " + ", ".join(f"{g} {n}" for g, n in counts.items()))
            if self.mask_classes:
                out.append(f"  mask classes: {', '.join(self.mask_classes)}; masks that fail {len(self.bad_masks)}")
        out.extend(f"  problem: {p}" for p in self.problems)
        out.extend(f"  unreadable: row {row!r}: {why}" for row, why in self.unreadable[:SHOW_UNREADABLE])
        if len(self.unreadable) > SHOW_UNREADABLE:
            out.append(f"  unreadable: ... and {len(self.unreadable) - SHOW_UNREADABLE} more")
        out.extend(f"  bad mask: row {row!r}: {why}" for row, why in self.bad_masks[:SHOW_UNREADABLE])
        if len(self.bad_masks) > SHOW_UNREADABLE:
            out.append(f"  bad mask: ... and {len(self.bad_masks) - SHOW_UNREADABLE} more")
        out.append("OK" if self.ok else f"{len(self.problems)} problem(s)")
        return out


def check_dataset(
    key: str, path: str | Path | None, options: Mapping[str, str] | None = None, *, seed: int = 0, progress: bool | None = None
) -> CheckReport:
    """Read a copy of a release as the adapter does and report what it holds and what is wrong.

    Parameters
    ----------
    key
        Dataset key (``fmcache datasets`` lists them).
    path
        Root of the user's copy (None: ``$FMCACHE_DATA/<key>``).
    options
        Dataset options, as for :func:`fmcache.datasets.load_dataset`.
    seed
        Split seed (only matters for a ``split=balanced-test:<attribute>`` option).
    progress
        Show a progress bar on stderr while every image is decoded; None: when stderr is a terminal.

    Returns
    -------
    CheckReport
        Rows, subjects, label and group counts, files missing, files that cannot be decoded
        (every present image is decoded in full, as `embed` would) and the problems, each naming
        its fix. An unknown dataset key still raises.
    """
    spec = get_dataset(key)
    report = CheckReport(key=key, root=Path(path).expanduser() if path is not None else None)
    try:
        ds = load_dataset(key, path, options=options, seed=seed)
    except DatasetError as e:
        report.problems.append(f"{e} (see `fmcache datasets {key}` for the expected layout)")
        return report
    report.root = ds.root
    report.mask_classes = tuple(spec.mask_classes) if spec.mask is not None else ()
    t = ds.table
    report.rows, report.subjects = len(t), int(t["subject"].nunique())
    report.split_counts = {k: int((t["split"] == code).sum()) for k, code in SPLIT_NAMES.items()}
    for name in ds.label_names:
        values, counts = np.unique(t[f"label/{name}"].to_numpy(), return_counts=True)
        report.label_counts[name] = {int(v): int(n) for v, n in zip(values, counts)}
    for attr in ds.attribute_names:
        codes = t[f"sa/{attr}"].to_numpy()
        groups = ds.rules[attr].groups
        report.group_counts[attr] = {g: int((codes == i).sum()) for i, g in enumerate(groups)} | {"unknown": int((codes == -1).sum())}

    listed = [p for p in t["path"].astype(str) if p]
    report.files = len(listed)
    report.missing = ds.missing_files()
    if report.missing:
        shown = ", ".join(report.missing[:SHOW_MISSING]) + (", ..." if len(report.missing) > SHOW_MISSING else "")
        report.problems.append(
            f"{len(report.missing)} of {len(listed)} image files missing below {ds.root}: {shown}; "
            f"unpack or download them (layout: `fmcache datasets {key}`)"
        )
    _decode_every_image(ds, report, sys.stderr.isatty() if progress is None else progress)
    for attr, c in report.group_counts.items():
        if spec.needs_data and c["unknown"] == report.rows:
            report.problems.append(f"{attr} is unknown in every row; check the metadata column it comes from ({ds.rules[attr].source})")
    return report


def _decode_every_image(ds, report: CheckReport, progress: bool) -> None:
    """Decode every present image, so that pixels that cannot be read behind a readable table
    (and a sound header: truncated files) are found before an encode stops on them."""
    missing = set(report.missing)
    rows = [i for i, p in enumerate(ds.table["path"].astype(str)) if p not in missing]
    with _progress_bar(progress, f"decoding {ds.name}") as bar:
        task = bar.add_task("decode", total=len(rows)) if bar else None
        # a volumetric segmentation dataset is decoded with its grid, which its label volume must share
        read = ds.volume if ds.spec.volume is not None else ds.image
        for i in rows:
            try:
                image = read(i)
            except DatasetError as e:
                report.unreadable.append((str(ds.table["id"].iloc[i]), str(e)))
                image = None
            if image is not None and ds.spec.mask is not None:
                _check_mask(ds, i, image, report)
            if bar:
                bar.advance(task)
    if report.unreadable:
        report.problems.append(
            f"{len(report.unreadable)} of {len(rows)} images cannot be decoded (listed as unreadable below); "
            f"repair or replace those files, or remove their rows"
        )
    if report.bad_masks:
        report.problems.append(
            f"{len(report.bad_masks)} of {len(rows)} masks cannot be decoded or do not fit their image (listed as bad "
            f"mask below); replace those files with the release's copies, or remove their rows"
        )


def _check_mask(ds, i: int, image, report: CheckReport) -> None:
    """Decode row ``i``'s mask (values are checked by ``Dataset.mask``) and compare its size with the image's
    (a label volume: its voxel grid with the image volume's)."""
    row_id = str(ds.table["id"].iloc[i])
    try:
        mask = ds.mask_volume(i) if ds.spec.volume is not None else ds.mask(i)
    except DatasetError as e:
        report.bad_masks.append((row_id, str(e)))
        return
    if ds.spec.volume is not None:
        if not mask.same_grid(image):
            report.bad_masks.append((row_id, f"label volume {ds.mask_file(i)} is not on its image's voxel grid: shape "
                                             f"{mask.shape} vs {image.shape}, spacing {_mm(mask.spacing)} vs "
                                             f"{_mm(image.spacing)} mm, or another position / orientation"))
        return
    height_width = (image.size[1], image.size[0])
    if mask.shape != height_width:
        why = (f"mask {ds.mask_file(i)} is {mask.shape[0]} x {mask.shape[1]} (H x W) but its image is "
               f"{height_width[0]} x {height_width[1]}")
        report.bad_masks.append((row_id, why))


def _mm(spacing) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing)


def _progress_bar(enabled: bool, label: str):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # on stderr, and gone when done: the report on stdout stays what a script reads
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
