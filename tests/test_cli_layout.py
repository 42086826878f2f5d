"""What the commands print, read on an 80-column terminal: listings never split what users
type or copy, help text is wrapped by the terminal, and flags read as flags."""

from __future__ import annotations

import pytest
import typer

from fmcache.cli import app
from fmcache.cli.app import reflow
from fmcache.datasets import DATASETS
from fmcache.embed.models import MODELS
from fmcache.heads import HEADS

WIDTH = 80


@pytest.fixture
def at(run_cli, monkeypatch):
    """Run the CLI on a terminal of the given width; its stdout, checked to fit."""

    def run(width: int, *args: str) -> str:
        monkeypatch.setenv("COLUMNS", str(width))
        code, out, err = run_cli(*args)
        assert code == 0, err
        too_wide = [line for line in out.splitlines() if len(line) > width]
        assert not too_wide, too_wide
        return out

    return run


def _whole(keys, out: str) -> None:
    lines = out.splitlines()
    split = [k for k in keys if not any(k in line for line in lines)]
    assert not split, f"split or missing: {split}\n{out}"


def test_models_and_datasets_keep_their_keys_whole(at):
    _whole([k for k, m in MODELS.items() if not m.hidden], at(WIDTH, "models"))
    _whole(list(DATASETS), at(WIDTH, "datasets"))


def test_detail_views_hold_what_the_listing_leaves_out(at):
    out = at(WIDTH, "models", "biomedclip")
    assert "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in out.replace("\n", "")
    assert "normalisation: mean (0.4815" in out
    out = at(WIDTH, "datasets", "ham10000")
    assert "Where to get it" in out and "HAM10000_metadata" in out


def test_runs_and_headline_tables_keep_run_ids_and_heads_whole(at, toy_run):
    run = toy_run.run
    runs = str(run.path.parent)
    out = at(WIDTH, "results", "--runs", runs)
    _whole([run.path.name], out)
    out = at(WIDTH, "results", run.path.name, "--runs", runs)
    heads = sorted(set(run.metrics["head"]))
    assert set(heads) <= set(HEADS) | {"zeroshot"}
    _whole(heads, out)
    _whole([f"{run.metrics['value'].iloc[0]:.3f}"], out)


def test_the_cache_listing_keeps_names_whole(at, effnet_entry):
    out = at(WIDTH, "cache", "ls", "--root", str(effnet_entry.root))
    _whole(["synthetic", "efficientnet_lite0", "complete"], out)


COMMANDS = [" ".join(p) for p in (("",), ("embed",), ("probe",), ("results",), ("report",), ("datasets",),
                                  ("models",), ("cache", "verify"), ("demo",))]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_and_flags_read_as_flags(at, command):
    out = at(WIDTH, *command.split(), "--help")
    assert "<bool>" not in out and "Traceback" not in out


def test_help_prose_is_wrapped_by_the_terminal():
    doc = """First line.

        A paragraph written over
        three lines of source
        text.

        Example:

          fmcache embed -m x \\
              -d y
    """
    assert reflow(doc) == ("First line.\n\nA paragraph written over three lines of source text.\n\nExample:\n\n"
                           "  fmcache embed -m x \\\n      -d y")


def test_help_reflows_with_the_width(at):
    narrow, wide = at(WIDTH, "embed", "--help"), at(160, "embed", "--help")
    sentence = "rerunning a finished entry is a no-op that writes nothing"
    assert sentence in " ".join(line.strip() for line in narrow.splitlines())
    # on a wide terminal the paragraph takes fewer lines: nothing breaks it by hand
    assert any(sentence in line for line in wide.splitlines())


def test_every_command_has_help():
    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    assert all(c.help for c in walk(typer.main.get_command(app)))


def test_the_heads_option_names_every_registered_head():
    # the help is written out so that --help needs no JAX; the registry is the fact it must follow
    probe = typer.main.get_command(app).commands["probe"]
    (option,) = [p for p in probe.params if p.name == "heads"]
    listed = option.help.split(":", 1)[1].rstrip(".").replace(" ", "").split(",")
    assert sorted(listed) == sorted(HEADS)
