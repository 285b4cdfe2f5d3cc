"""The method contract's optimisation hooks: a method with its own named optimisers (each with
its schedule) and several backward passes per step (``manual_optimization``), run by the one
engine step and loop: AMP scaler, finiteness check, checkpoint and resume stay the engine's."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.step import TrainStep, make_optimizers
from bench.train import NonFiniteLoss, Trainer
from methods.base import Losses, Method
from tests.helpers import random_batch, tiny_context, tiny_spec


class SegmenterAndCritic(Method):
    """A segmenter trained against a critic, the critic on its own loss: two optimisers (SGD with
    a linear decay, Adam halving every step), two backward passes per step."""

    manual_optimization = True
    nan_at: int | None = None

    def __init__(self, ctx, **hparams):
        super().__init__(ctx, **hparams)
        self.networks["seg"] = nn.Conv3d(1, ctx.num_classes, 1)
        self.networks["critic"] = nn.Sequential(nn.Conv3d(ctx.num_classes, 1, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten())

    def optimizers(self, train):
        seg = torch.optim.SGD(self.networks["seg"].parameters(), lr=train.lr, momentum=0.9)
        critic = torch.optim.Adam(self.networks["critic"].parameters(), lr=1e-3)
        return {"seg": (seg, lambda s: train.lr * (1 - s / train.iterations)), "critic": (critic, lambda s: 1e-3 * 0.5 ** s)}

    def training_step(self, labeled, unlabeled, step, opt=None):
        logits = self.networks["seg"](labeled["image"])
        seg_loss = F.cross_entropy(logits, labeled["label"]) - 0.1 * self.networks["critic"](logits.softmax(1)).mean()
        if step == self.nan_at:
            seg_loss = seg_loss * float("nan")
        opt.zero_grad("seg")
        opt.backward(seg_loss, "seg")
        opt.step("seg")
        critic_loss = self.networks["critic"](logits.detach().softmax(1)).pow(2).mean()
        opt.zero_grad("critic")  # the segmenter's backward reached the critic too
        opt.backward(critic_loss, "critic")
        opt.step("critic")
        return Losses(seg_loss.detach() + critic_loss.detach(), {"seg": seg_loss.detach(), "critic": critic_loss.detach()})

    def predict(self, x):
        return self.networks["seg"](x)


def _weights(method) -> dict:
    return {f"{k}.{n}": p.detach().clone() for k, m in method.networks.items() for n, p in m.named_parameters()}


def test_two_optimisers_two_backward_passes_one_step():
    from bench.config import TrainConfig

    ctx = tiny_context(num_classes=4, patch=(8, 8, 8))
    m = SegmenterAndCritic(ctx)
    train = TrainConfig(lr=0.1, iterations=10)
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    assert type(ts.optimizers["critic"]) is torch.optim.Adam and type(ts.optimizers["seg"]) is torch.optim.SGD
    assert ts.set_lr(3) == {"seg": pytest.approx(0.1 * 0.7), "critic": pytest.approx(1e-3 / 8)}
    assert ts.optimizers["seg"].param_groups[0]["lr"] == pytest.approx(0.07)
    before = _weights(m)
    losses = ts(*random_batch(ctx), 3)
    after = _weights(m)
    assert set(losses.parts) == {"seg", "critic"}
    assert all(not torch.equal(before[k], after[k]) for k in before), "each optimiser moved its network"


def _spec(tiny_dataset, run_dir, **kw):
    spec = tiny_spec(tiny_dataset, "supervised", run_dir, iterations=4, val_every=0, ckpt_every=1, **kw)
    spec.method_cls, spec.method_name = SegmenterAndCritic, "segmenter_and_critic"
    return spec


def test_named_optimisers_are_checkpointed_and_resume_to_the_same_weights(tiny_dataset, tmp_path):
    whole = Trainer(_spec(tiny_dataset, tmp_path / "a"))
    whole.fit()
    first = Trainer(_spec(tiny_dataset, tmp_path / "b", ))
    first.spec.stop_after = 2
    first.fit()
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert set(state["optimizers"]) == {"seg", "critic"} and "optimizer" not in state
    second = Trainer(_spec(tiny_dataset, tmp_path / "b"))
    second.fit()
    assert second.step == 4
    a, b = _weights(whole.method), _weights(second.method)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[1]["lr_seg"] == pytest.approx(0.01 * 0.75) and log[1]["lr_critic"] == pytest.approx(5e-4)


def test_a_non_finite_loss_stops_before_its_backward_pass(tiny_dataset, tmp_path):
    SegmenterAndCritic.nan_at = 1
    try:
        trainer = Trainer(_spec(tiny_dataset, tmp_path / "n"))
        with pytest.raises(NonFiniteLoss, match="part: seg"):
            trainer.fit()
    finally:
        SegmenterAndCritic.nan_at = None


@pytest.mark.parametrize("amp, want", [("fp16", torch.float16), (True, None)])
def test_amp_dtype_by_setting(amp, want):
    """amp="fp16" is the released scripts' fp16 (with a GradScaler on CUDA); amp=true bf16 where
    the GPU supports it. On CPU autocast stays off either way (fp32)."""
    from bench.step import amp_dtype, amp_enabled

    cuda = torch.device("cuda")
    assert amp_dtype(cuda, amp) == (want or (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16))
    assert amp_enabled(torch.device("cpu"), amp) is False and amp_enabled(cuda, amp) is True


def test_amp_setting_parses_fp16():
    from bench.config import TrainConfig
    from bench.core.settings import convert_field

    assert convert_field("--set", TrainConfig, "amp", "fp16") == "fp16"
    assert convert_field("--set", TrainConfig, "amp", "false") is False
    from bench.core.errors import UserError

    with pytest.raises(UserError, match="fp8"):
        convert_field("--set", TrainConfig, "amp", "fp8")
