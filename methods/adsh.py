"""Adsh (Guo & Li, ICML 2022: "Class-imbalanced semi-supervised learning with adaptive
thresholding") on the CPS pair, as in DHC's ``train_adsh.py``.

Each network keeps a bank of its softmax maps on the last unlabeled images (``bank`` images;
DHC: a quarter of the unlabeled set). When the bank is full, thresholds are recalibrated and the
bank emptied: with N_c = voxels predicted as class c in the bank and k the majority class,
``rho = #{voxels with p_k > thresh_major} / N_k``; class c's threshold is the
``floor(rho N_c)``-th largest p_c in the bank (0-based), so every class keeps the same share of
its confident voxels as the majority class keeps above ``thresh_major``. The cross-pseudo CE of
network A against argmax B uses A's logits multiplied by B's class mask ``1[p^B_c > t^B_c]``
(B, C, ...) (DHC's ``ClassDependent_WeightedCrossEntropyLoss``: the mask multiplies the
*logits*, which is what the released code does). Thresholds start at 0 (no masking).

``thresh_major`` defaults to 0.95 (the ADSH class default and the paper); DHC's script
constructs it with 0.9 - set ``--set thresh_major=0.9`` to match that script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import MethodContext
from methods.cps import CoTraining


def adaptive_thresholds(scores: torch.Tensor, thresh_major: float) -> torch.Tensor:
    """Per-class thresholds from a bank of softmax maps ``scores`` (N, C, ...) -> (C,)."""
    c = scores.shape[1]
    flat = scores.movedim(1, 0).reshape(c, -1).float()  # (C, V)
    counts = torch.bincount(flat.argmax(0), minlength=c)[:c]
    major = int(counts.argmax())
    rho = (float((flat[major] > thresh_major).sum()) + 1e-8) / (float(counts[major]) + 1e-8)
    v = flat.shape[1]
    thr = torch.empty(c)
    for i in range(c):
        k = min(int(rho * counts[i]), v - 1)  # 0-based rank in descending order
        thr[i] = torch.kthvalue(flat[i].cpu(), v - k).values
    return thr


class ThresholdBank:
    """Collects softmax maps of unlabeled images; recalibrates thresholds when full (DHC's ADSH)."""

    def __init__(self, num_classes: int, capacity: int, thresh_major: float):
        self.capacity = max(1, capacity)
        self.thresh_major = thresh_major
        self.thresholds = torch.zeros(num_classes)
        self.scores: list[torch.Tensor] = []

    @property
    def filled(self) -> int:
        return sum(s.shape[0] for s in self.scores)

    def update(self, logits_u: torch.Tensor) -> torch.Tensor:
        """DHC's order: store while ``filled < capacity - 1``, otherwise recalibrate and empty."""
        if self.filled < self.capacity - 1:
            room = self.capacity - self.filled
            self.scores.append(torch.softmax(logits_u.detach().float(), 1)[:room].cpu())
        elif self.scores:
            self.thresholds = adaptive_thresholds(torch.cat(self.scores), self.thresh_major)
            self.scores = []
        return self.thresholds

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) float: 1 where class c's probability exceeds its threshold."""
        p = torch.softmax(logits.detach().float(), 1)
        shape = (1, -1) + (1,) * (p.dim() - 2)
        return (p > self.thresholds.to(p.device).reshape(shape)).float()

    def state_dict(self) -> dict:
        return {"thresholds": self.thresholds.clone(), "scores": [s.clone() for s in self.scores]}

    def load_state_dict(self, state: dict) -> None:
        self.thresholds = state["thresholds"].clone()
        self.scores = [s.clone() for s in state["scores"]]


@register_method("adsh")
class Adsh(CoTraining):
    """Adsh: per-class adaptive thresholds calibrated to the majority class, on the CPS pair."""

    paper = "Guo & Li, Adsh, ICML 2022"

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC initialises its network B with Xavier-normal
        thresh_major: float = setting(0.95, ge=0.0, le=1.0)
        bank: int = setting(0, ge=0)  # images per calibration; 0 = a quarter of the unlabeled cases (DHC)

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        cap = self.hp.bank or max(1, ctx.n_unlabeled // 4)
        self.banks = {k: ThresholdBank(ctx.num_classes, cap, self.hp.thresh_major) for k in ("A", "B")}

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        if out_A.shape[0] > n_l:
            self.banks["A"].update(out_A[n_l:])
            self.banks["B"].update(out_B[n_l:])

    def cps_loss(self, out_A, out_B, wA, wB, n_l: int) -> torch.Tensor:
        mask_A, mask_B = self.banks["A"].mask(out_A), self.banks["B"].mask(out_B)
        max_A, max_B = out_A.detach().argmax(1), out_B.detach().argmax(1)
        return F.cross_entropy(out_A.float() * mask_B, max_B) + F.cross_entropy(out_B.float() * mask_A, max_A)

    def running_state(self) -> dict:
        return {"banks": {k: b.state_dict() for k, b in self.banks.items()}}

    def load_running_state(self, state: dict) -> None:
        for k, b in self.banks.items():
            b.load_state_dict(state["banks"][k])
