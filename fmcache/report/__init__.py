"""One self-contained HTML page from run directories: setup, headline tables with
bootstrap intervals, trade-off, per-group and calibration figures, ranks across datasets,
representation fairness, segmentation Dice, and a summary generated from the tables.

    from fmcache.report import build_report
    build_report(["~/.cache/fmcache/runs/20261127-101500-synthetic-medclip"], "study.html")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fmcache.runs import Run

__all__ = ["build_report"]


def build_report(runs: Sequence[str | os.PathLike[str] | Run], out: str | os.PathLike[str], *,
                 representation: bool = True) -> Path:
    """Write the report of ``runs`` to ``out`` as one HTML file.

    Parameters
    ----------
    runs
        Run directories (or loaded runs) from ``fmcache probe``; fine-tuning and
        segmentation runs get their own sections.
    out
        The HTML file to write; missing parent folders are created.
    representation
        Map the cached features found beside the runs (attribute predictability and
        t-SNE, on a subsample); off, the section is left out.

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> build_report(["runs/20261127-101500-synthetic-efficientnet_lite0"], "study.html")
    """
    from fmcache.report.build import build
    from fmcache.report.html import render

    page = render(build(runs, representation=representation))
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
