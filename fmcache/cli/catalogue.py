"""What exists: `fmcache models`, `fmcache datasets` (listings, one entry's detail, and
checking a copy of a dataset) and `fmcache protocols`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmcache.cli.app import app, command, dataset_options


@command(app)
def models(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="A model to show in full.", show_default=False)] = None,
) -> None:
    """List the foundation models, or show one: weights source, licence, preprocessing, features."""
    from fmcache.embed.models import MODELS
    from fmcache.embed.registry import get_model
    from fmcache.embed.weights import weights_dir
    from fmcache.segment.models import SAM_MODELS, VOLUME_MODELS
    from fmcache.views import (
        make_console,
        model_detail,
        models_table,
        segmentation_model_detail,
        segmentation_models_table,
        volume_model_detail,
    )

    console = make_console()
    if name is None:
        console.print(models_table(m for m in MODELS.values() if not m.hidden))
        console.print(segmentation_models_table(SAM_MODELS.values(), VOLUME_MODELS.values()))
        return
    if name in SAM_MODELS:
        lines = segmentation_model_detail(SAM_MODELS[name], str(weights_dir()))
    elif name in VOLUME_MODELS:
        lines = volume_model_detail(VOLUME_MODELS[name], str(weights_dir()))
    else:
        lines = model_detail(get_model(name), str(weights_dir()))
    for line in lines:
        console.print(line, markup=False, highlight=False)


@command(app)
def protocols() -> None:
    """List the protocols' switches side by side: fmcache's defaults, the FairMedFM reference
    code's values and the paper's, each with where it is stated.

    `embed` and `probe` take --protocol NAME and an option per switch; a run records every
    switch's value and how it differs from the reference code.
    """
    from fmcache.views import make_console, protocols_view

    make_console().print(protocols_view(), highlight=False)


@command(app)
def datasets(
    name: Annotated[
        Optional[str],
        typer.Argument(metavar="NAME", help="A dataset to show (layout, options, rules); or `check` to validate your copy of DATASET.",
                       show_default=False),
    ] = None,
    dataset: Annotated[Optional[str], typer.Argument(metavar="DATASET", help="With `check`: the dataset key.", show_default=False)] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", "--path", metavar="PATH", show_default=False,
                     help="With `check`: root of your copy of the release (default $FMCACHE_DATA/<dataset>); for `csv`, the CSV file."),
    ] = None,
    option: Annotated[
        Optional[list[str]],
        typer.Option("--option", "-o", metavar="KEY=VALUE", help="With `check`: dataset option, repeatable.", show_default=False),
    ] = None,
) -> None:
    """List the datasets, show one (`fmcache datasets NAME`), or check your copy of one.

    `fmcache datasets check DATASET --data PATH` reads your copy as `embed` would, checks that
    every image file is there and decodes, prints rows, subjects, label and group counts, and
    exits non-zero naming each problem and its fix.

      fmcache datasets csv
      fmcache datasets check ham10000 --data ~/data/HAM10000
    """
    if name == "check":
        if dataset is None:
            raise typer.BadParameter("`check` needs a dataset key: fmcache datasets check DATASET --data PATH",
                                     param_hint="'DATASET'")
        _check(dataset, data, dataset_options(option))
        return
    if dataset is not None or data is not None or option:
        raise typer.BadParameter("only `check` takes a dataset, --data and -o: fmcache datasets check DATASET --data PATH",
                                 param_hint="'DATASET'")
    from fmcache.datasets import DATASETS, get_dataset
    from fmcache.datasets.samples import RESERVED_OPTIONS
    from fmcache.views import dataset_detail, datasets_table, make_console

    console = make_console()
    if name is None:
        console.print(datasets_table(DATASETS.values()))
        return
    console.print(dataset_detail(get_dataset(name), RESERVED_OPTIONS), highlight=False)


def _check(dataset: str, data: str | None, options: dict[str, str]) -> None:
    from fmcache.datasets.check import check_dataset

    report = check_dataset(dataset, data, options)
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)
