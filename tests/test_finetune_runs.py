"""Fine-tuning runs end to end: a SAMed run beside the segmentation sweeps, and the command line."""

from __future__ import annotations

import numpy as np
import pytest

from fmcache.finetune.loop import TrainConfig
from fmcache.finetune.run import FinetuneRequest, finetune
from fmcache.runs import list_runs


@pytest.fixture(scope="module")
def montgomery(tmp_path_factory):
    from helpers import seg_layouts

    from fmcache.datasets import load_dataset

    return load_dataset("montgomery", data=seg_layouts.write_montgomery(tmp_path_factory.mktemp("montgomery")))


def _demo_sam(*args, **kwargs):
    """The demo's SAM at 128 px: a few SAMed epochs through its encoder's LoRA take seconds."""
    import torch

    from fmcache.segment.demo_model import demo_spec, tiny_random_sam
    from fmcache.segment.sam import SamModel

    torch.manual_seed(0)
    return SamModel(spec=demo_spec(128), sam=tiny_random_sam(128, window_size=4), weights_id="tiny", weights_sha256=None)


def test_a_samed_run_is_a_segmentation_run_with_per_group_dice(montgomery, tmp_path, monkeypatch):
    import fmcache
    import fmcache.segment.sam

    monkeypatch.setattr(fmcache.segment.sam, "load_sam", _demo_sam)
    req = FinetuneRequest(dataset="montgomery", model="sam", method="samed+febs", rank=4, n_boot=50,
                          train=TrainConfig(epochs=3, batch_size=8, lr=5e-3, warmup_epochs=0, patience=0))
    run = finetune(montgomery, req, root=tmp_path)
    assert run.config["task"] == "segmentation" and run.config["finetune"]["method"] == "samed+febs"
    assert run.config["target_gaps"] == {"samed+febs": "dsc_delta"}
    m = run.metrics
    assert set(m["head"]) == {"samed+febs"} and {"dsc", "iou", "dsc_delta"} <= set(m["metric"])
    overall = m[(m["metric"] == "dsc") & (m["group"] == "overall")]["value"]
    assert overall.between(0, 1).all()
    # the predictions hold per-image, per-class Dice; their class mean is the overall value
    attr = run.config["attributes"][0]
    pred = run.prediction("samed+febs", "mask", attr)
    assert pred["dsc"].shape == (len(pred["row"]), 2)
    assert np.nanmean(pred["dsc"].mean(axis=1)) == pytest.approx(
        float(m[(m["metric"] == "dsc") & (m["group"] == "overall") & (m["attribute"] == attr)]["value"].iloc[0]))
    # the report and the comparison read it as a fine-tuned segmentation method
    from fmcache.report.compare import comparison

    frame = comparison([run.path])
    assert set(frame["method"]) == {"SAMed + febs"} and set(frame["family"]) == {"fine-tuned"}
    assert len(list_runs(tmp_path)) == 1


def test_finetune_command_trains_and_prints_the_test_metrics(run_cli, tiny_checkpoints, tmp_path):
    code, out, err = run_cli(
        "finetune", "-m", "clip", "-d", "synthetic", "--weights", tiny_checkpoints["clip"], "-o", "size=64",
        "-o", "image_size=32", "--epochs", "1", "--batch-size", "16", "--n-boot", "10", "--rank", "2",
        "--hp", "dro_step=0.05", "--method", "lora+groupdro", "--num-workers", "0", "--root", str(tmp_path))
    assert code == 0, err
    assert "lora+groupdro" in out and "run:" in out and "kept epoch 1 of 1" in out
    import fmcache

    (run,) = list_runs(tmp_path)["path"]
    cfg = fmcache.load_results(run).config
    assert cfg["finetune"]["hparams"]["dro_step"] == 0.05 and cfg["finetune"]["rank"] == 2


@pytest.mark.parametrize("args, message", [
    (("finetune", "-d", "synthetic"), "--model and --dataset"),
    (("finetune", "-m", "clip", "-d", "synthetic", "--hp", "dro_step"), "NAME=NUMBER"),
    (("finetune", "-m", "clip", "-d", "synthetic", "--method", "lora+dro", "-o", "size=20"), "unknown mitigation"),
    (("finetune", "--resume", "no-such-run"), "no run 'no-such-run'"),
])
def test_finetune_command_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli(*args)
    assert code != 0
    assert message in err and "Traceback" not in err


def test_a_damaged_request_is_one_clear_error(run_cli, tmp_path):
    run = tmp_path / "runs" / "20261202-000000-synthetic-clip-lora"
    run.mkdir(parents=True)
    (run / "request.json").write_text('{"dataset": "synthetic"')  # cut short
    code, out, err = run_cli("finetune", "--resume", str(run))
    assert code != 0 and "request.json is damaged" in err and "Traceback" not in err
