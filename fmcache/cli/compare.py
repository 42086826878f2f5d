"""`fmcache compare`: frozen features against fine-tuning in the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcache.cli.app import RootOpt, RunsOpt, app, command

GAP = 3  # between two columns of the listings' style: padding, the (blank) rule, padding


@command(app)
def compare(
    names: Annotated[list[str], typer.Argument(metavar="RUN", show_default=False,
                                               help="Run names (see `fmcache results`) or run directories: probe, "
                                               "fine-tuning, segmentation and SAMed runs.")],
    csv: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE", show_default=False,
                                                help="Also write the comparison, one row per method, to this CSV "
                                                "file.")] = None,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Compare frozen features with fine-tuning (FairMedFM's Table 2): one table per dataset,
    base model, label and attribute, one row per method.

    Rows: the linear probe (LP) and its mitigation heads on frozen features, then LoRA and full
    fine-tuning with theirs, and probes on a fine-tuned model's features (cached as
    <base>+<run>); for segmentation, SAM with each prompt, then SAMed and its mitigations.
    Columns: utility (AUC; Dice for segmentation), fairness gap (AUC gap; Dice gap), trade-off
    (ES-AUC; equity-scaled Dice) and worst-group utility. A method found in several runs is
    taken from the newest.

    Intervals are the ones each run computed on its test split: percentile bootstrap (95%)
    over the test samples, resampled within each group (and class), with the run's --n-boot
    resamples; no interval is shown for a run written with --n-boot 0.

    Example:

      fmcache compare 20261127-101500-chexpert-clip \\
          20261128-090000-chexpert-clip-lora --csv compare.csv
    """
    from rich.text import Text

    from fmcache.errors import FmcacheError
    from fmcache.report.compare import KEYS, METRICS, comparison
    from fmcache.runs import load_results
    from fmcache.views import make_console, table

    frame = comparison([load_results(r, root, runs) for r in names])
    if frame.empty:
        raise FmcacheError("the runs hold no AUC or Dice rows to compare: give probe, fine-tuning or segmentation runs")
    console = make_console()
    for (dataset, model, label, attribute, task), block in frame.groupby(KEYS, sort=False, dropna=False):
        # metric names as column titles, as `fmcache results` shows them; the lowest group has none
        utility, gap, tradeoff, worst = METRICS[task]
        titles = {"utility": utility, "gap": gap, "tradeoff": tradeoff, "worst": worst or f"worst {utility}"}
        t = table(f"{dataset} · {model}" + (f", label {label}" if label else "") + f", by {attribute}",
                  caption="value [95% bootstrap interval on the test split]; --csv adds the run of each row")
        numbers = {k: max(len(titles[k]), 7 if k in ("utility", "gap") else 5) for k in titles}  # "[0.123," / "0.123"
        t.add_column("method", width=_method_width(block["method"], console.width - sum(numbers.values()) - GAP * 4))
        for key, width in numbers.items():  # an interval wraps at its space
            t.add_column(titles[key], justify="right", min_width=width)
        rows = block.to_dict("records")
        for i, r in enumerate(rows):
            if i == 0 or rows[i - 1]["family"] != r["family"]:
                # the family heads its rows rather than filling a column: method names need the width
                t.add_row(Text(r["family"], style="bold"), "", "", "", "")
            last_of_family = i + 1 == len(rows) or rows[i + 1]["family"] != r["family"]
            t.add_row(f"  {r['method']}", _interval(r, "utility"), _interval(r, "gap"), _number(r["tradeoff"]),
                      _number(r["worst"]), end_section=last_of_family)
        console.print(t)
    if csv is not None:
        frame.to_csv(csv, index=False)
        typer.echo(f"wrote {len(frame)} rows to {csv}")


def _method_width(methods, room: int) -> int:
    """The method column's width: whole names where the terminal has room, else names wrapped at
    their spaces but never inside a word (a fine-tuned entry's name holds a run id to copy);
    rich would otherwise narrow the widest column first, folding those ids."""
    indent = 2
    longest = max(len(m) for m in methods) + indent
    word = max(len(w) for m in methods for w in m.split()) + indent
    return max(word, min(longest, room))


def _number(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"  # NaN is the one value unequal to itself


def _interval(row: dict, key: str) -> str:
    lo, hi = row[f"{key}_low"], row[f"{key}_high"]
    text = _number(row[key])
    return text if lo != lo or hi != hi or text == "n/a" else f"{text} [{lo:.3f}, {hi:.3f}]"
