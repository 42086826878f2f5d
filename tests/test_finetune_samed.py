"""SAMed fine-tuning: FEBS weights by hand, what is trained and what stays frozen, that a few
steps learn, group-specific decoders, and the refusal of unknown methods.

Training runs on the demo's SAM at 128 px (an 8 x 8 grid, 32 x 32 low-res masks) so that a
few dozen steps through the image encoder's LoRA fit in seconds; one test checks the real
1024 px geometry with a single forward pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmcache.errors import UnknownNameError
from fmcache.fairness import dice_per_sample
from fmcache.finetune.samed import METHODS, SAMED_SETTINGS, SamedTask, predict_masks
from fmcache.finetune.seg_loss import channel_dice_losses, febs_item_weights, febs_weights, one_hot, samed_loss

STEPS = 30
SIZE = 128
LOW = 4 * SIZE // 16  # the low-res masks' side: 4x the feature grid


def _sam(size: int = SIZE):
    from fmcache.segment.demo_model import demo_spec, tiny_random_sam
    from fmcache.segment.sam import SamModel

    return SamModel(spec=demo_spec(size), sam=tiny_random_sam(size, window_size=size // 32), weights_id="tiny",
                    weights_sha256=None)


def _batch(task: SamedTask, split: str = "train", train: bool = False) -> dict[str, torch.Tensor]:
    items = task.items(split, train=train)
    got = [items[i] for i in range(len(items))]
    return {k: torch.stack([g[k] for g in got]) for k in got[0]}


@pytest.fixture(scope="module")
def montgomery(tmp_path_factory):
    from helpers import seg_layouts

    from fmcache.datasets import load_dataset

    return load_dataset("montgomery", data=seg_layouts.write_montgomery(tmp_path_factory.mktemp("montgomery")))


@pytest.fixture(scope="module")
def trained(montgomery):
    """A ``samed`` task before and after STEPS AdamW steps on all its training items at once."""
    torch.manual_seed(0)
    sam = _sam()
    original = {k: v.clone() for k, v in sam.sam.state_dict().items()}
    task = SamedTask(sam, montgomery, "sex", "samed")
    before = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    evaluation = _batch(task)
    score0 = task.score("train", task.predict(evaluation))
    masks0 = predict_masks(task, task.rows("train"))
    optimiser = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=SAMED_SETTINGS["lr"])
    batch = _batch(task, train=True)
    for _ in range(STEPS):
        optimiser.zero_grad()
        loss, _ = task.loss(batch, task.init_state())
        loss.backward()
        optimiser.step()
    return {"task": task, "sam": sam, "original": original, "before": before, "score0": score0, "masks0": masks0,
            "score1": task.score("train", task.predict(evaluation))}


# ------------------------------------------------------------------------------------- FEBS


def _four_items() -> tuple[torch.Tensor, torch.Tensor]:
    """4 items of 1 x 2 pixels (left foreground, right background), 2 channels (background, fg).

    Items 0, 1 predict the foreground with 0.75 where it is and 0.25 where it is not; items 2, 3
    say 0.5 everywhere.
    """
    target = torch.tensor([[[1, 0]]] * 4)
    fg = torch.tensor([[[0.75, 0.25]]] * 2 + [[[0.5, 0.5]]] * 2)
    return torch.stack([1 - fg, fg], dim=1), one_hot(target, 2)


def test_febs_weights_by_hand():
    probs, onehot = _four_items()
    # group 0 (items 0, 1), foreground channel: sum(p t) = 2 x 0.75 = 1.5, sum(p p) = 2 x (0.5625 + 0.0625)
    # = 1.25, sum(t t) = 2: loss 1 - 3 / 3.25 = 1/13; the background channel mirrors it: L_0 = 2/13.
    # group 1 (items 2, 3): sum(p t) = 1, sum(p p) = 1, sum(t t) = 2: loss 1 - 2/3 = 1/3 per channel, L_1 = 2/3.
    assert channel_dice_losses(probs[:2], onehot[:2]).tolist() == pytest.approx([1 / 13, 1 / 13], abs=1e-5)
    assert channel_dice_losses(probs[2:], onehot[2:]).tolist() == pytest.approx([1 / 3, 1 / 3], abs=1e-5)
    # w_0 = tanh((L_0 / L_0) ** 1) = tanh(1) = 0.761594; w_1 = tanh((2/13) / (2/3)) = tanh(3/13) = 0.226764
    w = febs_item_weights(probs, onehot, torch.tensor([0, 0, 1, 1]), n_groups=2, gamma=1.0)
    assert w.tolist() == pytest.approx([0.761594, 0.761594, 0.226764, 0.226764], abs=1e-5)
    # gamma = 2: w_1 = tanh((3/13) ** 2) = tanh(0.053254) = 0.053204
    w2 = febs_weights(torch.tensor([2 / 13, 2 / 3]), torch.tensor([True, True]), gamma=2.0)
    assert w2.tolist() == pytest.approx([math.tanh(1.0), 0.053204], abs=1e-5)


def _reference_zero_fill(group_losses: np.ndarray, present: np.ndarray, gamma: float) -> np.ndarray:
    """FairSeg's rule: absent groups' losses are left at 0 before the minimum."""
    filled = np.where(present, group_losses, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.tanh((filled.min() / filled) ** gamma)


def test_febs_batch_missing_a_group_keeps_its_present_group_weighted():
    probs, onehot = _four_items()
    w = febs_item_weights(probs[2:], onehot[2:], torch.tensor([1, 1]), n_groups=2, gamma=1.0)
    assert torch.isfinite(w).all() and w.tolist() == pytest.approx([math.tanh(1.0)] * 2, abs=1e-6)
    # the reference's zero fill would weigh group 1 by tanh(0 / (2/3)) = 0: the Dice term would vanish
    ref = _reference_zero_fill(np.array([0.0, 2 / 3]), np.array([False, True]), 1.0)
    assert ref[1] == 0.0
    ours = febs_weights(torch.tensor([0.0, 2 / 3]), torch.tensor([False, True]), 1.0)
    assert float(ours[1]) == pytest.approx(math.tanh(1.0))


def test_febs_unknown_group_weighs_one_and_weights_carry_no_gradient():
    probs, onehot = _four_items()
    probs = probs.clone().requires_grad_(True)
    w = febs_item_weights(probs, onehot, torch.tensor([-1, 0, 1, 1]), n_groups=2, gamma=1.0)
    assert float(w[0]) == 1.0
    assert not w.requires_grad
    # only one group-0 item now: its loss is 2/13 as before (the items are alike), so the numbers hold
    assert w[1:].tolist() == pytest.approx([0.761594, 0.226764, 0.226764], abs=1e-5)


def test_samed_loss_is_ce_and_dice_in_the_benchmark_shares():
    logits = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    ce = torch.nn.functional.cross_entropy(logits, target)
    dice = channel_dice_losses(torch.softmax(logits, 1), one_hot(target, 3)).mean()
    assert float(samed_loss(logits, target)) == pytest.approx(float(0.2 * ce + 0.8 * dice), rel=1e-6)
    # weights of 1 are the plain loss; FEBS with one group and gamma 1 scales probabilities by tanh(1)
    assert float(samed_loss(logits, target, item_weights=torch.ones(3))) == pytest.approx(
        float(samed_loss(logits, target)), rel=1e-6)
    febs = samed_loss(logits, target, febs=(torch.zeros(3, dtype=torch.long), 1, 1.0))
    scaled = channel_dice_losses(torch.softmax(logits, 1) * math.tanh(1.0), one_hot(target, 3)).mean()
    assert float(febs) == pytest.approx(float(0.2 * ce + 0.8 * scaled), rel=1e-6)


# ------------------------------------------------------------------------------ the network


def test_only_lora_and_decoder_train_and_frozen_weights_stay_bit_identical(trained):
    task = trained["task"]
    names = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or (n.startswith("decoders.") and "iou_prediction_head" not in n)
                         for n in names)
    assert any("lora_" in n for n in names) and any(".mask_tokens." in n for n in names)
    assert all(".qkv." in n for n in names if "lora_" in n)
    trainable = set(names)
    after = task.model.state_dict()
    for name, before in trained["before"].items():
        if name in trainable:
            continue
        assert torch.equal(after[name], before), f"frozen {name} changed"
    changed = [n for n in trainable if not torch.equal(after[n], trained["before"][n])]
    assert any("lora_B" in n for n in changed) and any(".mask_tokens." in n for n in changed)
    assert any("output_hypernetworks_mlps" in n for n in changed)
    # the caller's model is untouched: same tensors, no adapters
    assert trained["sam"].sam.state_dict().keys() == trained["original"].keys()
    assert all(torch.equal(v, trained["original"][k]) for k, v in trained["sam"].sam.state_dict().items())


def test_decoder_outputs_background_and_every_class_from_pretrained_tokens(trained):
    task, sam = trained["task"], trained["sam"].sam
    dec = trained["before"]
    pretrained = sam.mask_decoder.mask_tokens.weight
    # montgomery: background + left + right lung = 3 tokens, copies of pretrained tokens 0, 1, 2
    assert torch.equal(dec["decoders.0.mask_tokens.weight"], pretrained[:3])
    assert task.model.decoders[0].num_mask_tokens == 3
    logits = task.predict({k: v[:1] for k, v in _batch(task).items()})
    assert logits.shape == (1, 3, LOW, LOW)


def test_a_few_steps_raise_the_training_dice(trained):
    task = trained["task"]
    assert trained["score1"] > trained["score0"] + 0.1, (trained["score0"], trained["score1"])
    # the same at each image's own size, with the package's metric
    rows = task.rows("train")
    truth = [task.dataset.mask(int(r)) for r in rows]
    masks = predict_masks(task, rows)
    assert [m.shape for m in masks] == [t.shape for t in truth]
    d0 = dice_per_sample(truth, trained["masks0"], n_classes=2).mean()
    d1 = dice_per_sample(truth, masks, n_classes=2).mean()
    assert d1 > d0 + 0.1, (d0, d1)


def test_score_is_the_mean_foreground_dice_of_the_low_res_maps(trained):
    task = trained["task"]
    batch = _batch(task)
    out = task.predict(batch)
    pred = out.argmax(1).numpy()
    labels = batch["mask"].numpy()
    # montgomery's images are 20 x 24 or 24 x 20: the low-res map shows the image over LOW x ceil(LOW 20 / 24)
    short = -(-LOW * 20 // 24)
    keep = [(slice(0, LOW), slice(0, short)) if int(s[0]) > int(s[1]) else (slice(0, short), slice(0, LOW))
            for s in batch["size"]]
    want = dice_per_sample([t[k] for t, k in zip(labels, keep)], [p[k] for p, k in zip(pred, keep)], n_classes=2)
    assert task.score("train", out) == pytest.approx(float(want.mean()))


# ------------------------------------------------------------------------------ mitigations


def test_resample_and_febs_train_with_their_weights(montgomery):
    torch.manual_seed(0)
    sam = _sam()
    resample = SamedTask(sam, montgomery, "sex", "samed+resample")
    # training rows' sex: 0, -1, 1, 0, 0, 0, 1 -> N = 6 known, N_0 = 4, N_1 = 2: 6 / (2 x 4), 6 / (2 x 2)
    assert resample.group_weights.tolist() == pytest.approx([0.75, 1.5])
    batch = _batch(resample)
    for task in (resample, SamedTask(sam, montgomery, "sex", "samed+febs")):
        loss, state = task.loss(batch, task.init_state())
        loss.backward()
        assert state == {} and torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters() if p.requires_grad)
    assert SamedTask(sam, montgomery, "sex", "samed+febs").describe()["gamma"] == SAMED_SETTINGS["gamma"]


def test_ind_routes_each_item_through_its_groups_decoder(montgomery):
    torch.manual_seed(0)
    task = SamedTask(_sam(), montgomery, "sex", "samed+ind")
    assert len(task.model.decoders) == 2
    batch = _batch(task)
    g = batch["g"]
    assert {0, 1, -1} <= set(g.tolist())
    first = task.predict(batch)
    with torch.no_grad():
        task.model.decoders[1].mask_tokens.weight.add_(1.0)
    second = task.predict(batch)
    assert torch.equal(first[g == 0], second[g == 0])
    assert not torch.allclose(first[g == 1], second[g == 1])
    assert not torch.allclose(first[g == -1], second[g == -1])  # the mean of both decoders' probabilities
    # a batch of group 0 trains decoder 0 only
    only0 = {k: v[g == 0] for k, v in batch.items()}
    loss, _ = task.loss(only0, {})
    loss.backward()
    assert all(p.grad is None for p in task.model.decoders[1].parameters())
    assert any(p.grad is not None for p in task.model.decoders[0].parameters())


def test_unknown_method_and_attribute_are_refused(montgomery):
    sam = _sam()
    with pytest.raises(UnknownNameError) as err:
        SamedTask(sam, montgomery, "sex", "samed+groupdro")
    assert "samed+groupdro" in str(err.value) and all(m in str(err.value) for m in METHODS)
    with pytest.raises(UnknownNameError, match="no attribute 'race'.*sex"):
        SamedTask(sam, montgomery, "race", "samed")


def test_real_geometry_items_and_masks(montgomery):
    from helpers.tiny_sam import tiny_sam

    from fmcache.segment.models import get_sam_model
    from fmcache.segment.sam import SamModel

    task = SamedTask(SamModel(get_sam_model("sam"), tiny_sam(), "tiny", None), montgomery, "sex", "samed",
                     rank=2)
    item = task.items("test", train=False)[0]
    assert item["x"].shape == (3, 1024, 1024) and item["mask"].shape == (256, 256)
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) == {0, 1, 2}
    row = int(task.rows("test")[0])
    (mask,) = predict_masks(task, [row])
    assert mask.shape == montgomery.mask(row).shape and mask.dtype == np.uint8
    assert task.describe()["rank"] == 2 and task.describe()["dice_weight"] == 0.8
