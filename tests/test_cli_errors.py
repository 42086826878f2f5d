"""One error path for the whole command line: usage errors, user errors, the unexpected, and
Ctrl-C, each with its exact shape of output and exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import typer

import fmcache
from fmcache.cli import app


def _commands(command, path=()):
    """Every command of the CLI's own command table, with its path (groups included)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))
NEEDS_ARGS = [" ".join(p) for p, c in COMMANDS if any(param.required for param in c.params)]
GROUPS = [" ".join(p) for p, c in COMMANDS if hasattr(c, "commands")]


def _usage_error(code: int, err: str, command: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert err.startswith(f"Usage: fmcache {command}".rstrip()), err
    return errors[0]


def test_the_command_table_is_read():
    assert {"embed", "probe", "report", "cache info", "cache rm"} <= set(NEEDS_ARGS)
    assert set(GROUPS) == {"", "cache"}


@pytest.mark.parametrize("command", NEEDS_ARGS)
def test_every_command_without_its_arguments_is_a_usage_error(run_cli, command):
    code, out, err = run_cli(*command.split())
    line = _usage_error(code, err, command)
    assert line.startswith("error: missing "), line
    assert out == ""


@pytest.mark.parametrize("group", GROUPS)
def test_a_group_alone_shows_its_help(run_cli, group):
    code, out, err = run_cli(*group.split())
    assert code == 0 and err == "" and "Usage: fmcache" in out and "Commands" in out


@pytest.mark.parametrize("args, command, expect", [
    (["nosuchcmd"], "", "error: no such command 'nosuchcmd'"),
    (["embed", "--modle", "dinov2"], "embed", "--model"),
    (["probe", "-d", "x", "-m", "y", "--n-boot", "-1"], "probe", "--n-boot"),
    (["embed", "-m", "dinov2", "-d", "synthetic", "-o", "size"], "embed", "is not KEY=VALUE"),
    (["datasets", "check"], "datasets", "needs a dataset key"),
    (["datasets", "ham10000", "--data", "x"], "datasets", "only `check` takes"),
    (["cache", "info", "a", "b", "c"], "cache info", "unexpected extra argument"),
])
def test_bad_usage_is_short_usage_and_one_error_line(run_cli, args, command, expect):
    code, _, err = run_cli(*args)
    assert expect in _usage_error(code, err, command)


def test_a_user_error_is_one_line_and_exit_1(run_cli):
    code, out, err = run_cli("embed", "-m", "efficientnet_lite1", "-d", "synthetic")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == ["error: unknown model 'efficientnet_lite1' (did you mean 'efficientnet_lite0'?); "
                                "`fmcache models` lists them"]


def _explode(*_args, **_kwargs):
    raise RuntimeError("disk on fire")


def test_an_unexpected_error_is_one_line_naming_debug(run_cli, monkeypatch):
    monkeypatch.setattr("fmcache.views.models_table", _explode)
    code, _, err = run_cli("models")
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == ["error: `fmcache models` failed unexpectedly: RuntimeError: disk on fire; rerun with "
                                "--debug (or FMCACHE_DEBUG=1) to see where, and report it if it is not your input"]
    for args, env in (((("--debug", "models")), None), (("models", "--debug"), None), (("models",), "1")):
        if env:
            monkeypatch.setenv("FMCACHE_DEBUG", env)
        code, _, err = run_cli(*args)
        assert code == 1 and "Traceback" in err and "_explode" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_ctrl_c_in_any_command_says_so_and_exits_130(run_cli, monkeypatch):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fmcache.views.datasets_table", interrupt)
    code, _, err = run_cli("datasets")
    assert code == 130 and "Traceback" not in err
    assert err.strip() == "interrupted: nothing is left half-written; rerun the same command to go on"


def test_ctrl_c_in_probe_says_the_unfinished_run_is_discarded(run_cli, monkeypatch, toy_run, tmp_path):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    import fmcache.probe

    monkeypatch.setattr(fmcache.probe, "run_sweep", interrupt)
    ds, model = toy_run.run.config["dataset"], toy_run.run.config["model"]
    code, _, err = run_cli("probe", "-d", ds, "-m", model, "--root", str(toy_run.root), "--runs", str(tmp_path))
    assert code == 130 and "Traceback" not in err
    assert err.strip() == (f"interrupted: the unfinished run of {ds}/{model} was discarded and no run was written; "
                           "rerun the command to train it again")


STALLING_ENCODER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    # a shell hands the jobs it starts in the background SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: restore it, as a terminal's foreground command has it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import fmcache.embed.encode as encode
    plain = encode._encode_batch
    calls = [0]
    def stalling(*args, **kwargs):
        # one batch is one chunk: at the third batch two chunks are written; say so and wait for
        # Ctrl-C, so that the test interrupts between chunks however slow the machine is
        calls[0] += 1
        if calls[0] == 3:
            pathlib.Path(os.environ["STALLED_MARKER"]).touch()
            # short sleeps: Ctrl-C may land on another thread of the process, and the main thread
            # only sees it between calls, never inside one long sleep
            for _ in range(6000):
                time.sleep(0.1)
        return plain(*args, **kwargs)
    encode._encode_batch = stalling
    from fmcache.cli import main
    sys.argv = ["fmcache", *sys.argv[1:]]
    main()
""")
EMBED = ["embed", "-m", "efficientnet_lite0", "-d", "synthetic", "-o", "size=40", "-o", "image_size=32",
         "--chunk-rows", "4", "-b", "4", "--num-workers", "1"]


def _chunks_done(root) -> int:
    try:
        entries = fmcache.open_cache(str(root)).entries()
    except fmcache.errors.FmcacheError:
        return 0
    progress = entries["chunks_done"].iloc[0] if len(entries) else ""
    return int(progress.split("/")[0]) if "/" in progress else 0  # "none yet" while the entry is being made


def test_sigint_to_a_running_embed_says_what_is_kept_and_a_rerun_resumes(tmp_path):
    marker = tmp_path / "stalled"
    env = {**os.environ, "FMCACHE_HOME": str(tmp_path), "STALLED_MARKER": str(marker)}
    # its own process group, as a terminal's: Ctrl-C reaches the decoding worker too
    p = subprocess.Popen([sys.executable, "-c", STALLING_ENCODER, *EMBED], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    kept = _chunks_done(tmp_path)
    assert kept == 2
    assert err.strip().splitlines()[-1] == (f"interrupted: {kept}/10 chunks of synthetic/efficientnet_lite0 are in the cache "
                                            "and stay there; rerun the same command to encode only the rest")
    rerun = subprocess.run([sys.executable, "-m", "fmcache.cli", *EMBED], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 * kept} reused from an earlier run" in rerun.stdout
    assert _chunks_done(tmp_path) == 10
