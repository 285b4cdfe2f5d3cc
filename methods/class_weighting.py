"""Class-weighting strategies for imbalance (one interface, usable by any method).

A strategy holds per-class weights ``weights`` (C,) (background included; DHC scales them so
that they average around 1 x C) and updates them from a batch. Formulas follow DHC's
``train_dhc.py``:

* :class:`DistDW`: ``w_c = C log(N_max / N_c) / max_c' log(N_max / N_c')`` from voxel counts,
  initialised from the labeled cases' counts, then an EMA (momentum 0.99) of the same formula
  on the argmax of a network's unlabeled predictions.
* :class:`DiffDW`: d_t = per-class hard Dice of the prediction on the labeled batch,
  Δ = d_t - d_{t-1}; learn = EMA(1[Δ>0] Δ log(d_t / d_{t-1})), unlearn = EMA(1[Δ<=0] Δ log(...)),
  both with momentum (K-1)/K, K = 50; w = C normalise_max(((unlearn + ε) / (learn + ε))^(1/5)
  EMA(1 - d_t)); initialised to C.
* :class:`CReST`: mu_c = (N_c / N_max)^(1/3); the class of rank r (by mu, descending) gets the
  mu of the class of rank C-1-r (majority <-> minority); EMA 0.99 from unlabeled predictions.
* :class:`SimiS`: P_c = N_c / Σ N; w_c = C (max P - P_c); initialised as EMA(w_labeled, C),
  then EMA 0.99 from the predictions on the whole batch.
"""

from __future__ import annotations

import numpy as np
import torch

from methods.base import RunningState


def ema(current: torch.Tensor, past: torch.Tensor, momentum: float) -> torch.Tensor:
    """DHC's EMA: momentum * past + (1 - momentum) * current."""
    return momentum * past + (1 - momentum) * current


class Weighting(RunningState):
    """Uniform weights (plain CPS); base class of the strategies."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.weights = torch.ones(num_classes)


class DistDW(Weighting):
    """Distribution-aware debiased weighting (DHC)."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        super().__init__(num_classes)
        self.momentum = momentum

    @staticmethod
    def formula(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(C,) voxel counts -> log(N_max / N_c) / max log(...) (in [0, 1]; the largest class gets 0)."""
        n = torch.as_tensor(counts, dtype=torch.float64)
        p = torch.log((n.max() + 1e-8) / (n + 1e-8))
        if p.max() <= 0:  # all classes equally frequent: no imbalance to correct (DHC would divide 0 by 0)
            return torch.ones(len(n))
        return (p / p.max()).float()

    def init(self, labeled_counts: np.ndarray) -> torch.Tensor:
        self.weights = self.formula(labeled_counts) * self.num_classes
        return self.weights

    def update(self, unlabeled_logits: torch.Tensor) -> torch.Tensor:
        """EMA update from a network's predictions (B, C, ...) on unlabeled images."""
        cur = self.formula(_counts(unlabeled_logits, self.num_classes)) * self.num_classes
        self.weights = ema(cur, self.weights, self.momentum)
        return self.weights


class DiffDW(Weighting):
    """Difficulty-aware debiased weighting (DHC)."""

    def __init__(self, num_classes: int, accumulate_iters: int = 50):
        super().__init__(num_classes)
        self.momentum = (accumulate_iters - 1) / accumulate_iters
        self.last_dice = torch.zeros(num_classes) + 1e-8
        self.learn = torch.zeros(num_classes)
        self.unlearn = torch.zeros(num_classes)
        self.dice_weight = torch.ones(num_classes)
        self.weights = torch.ones(num_classes) * num_classes

    @staticmethod
    def hard_dice(logits: torch.Tensor, label: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
        """Per-class Dice of argmax(logits) vs label over the whole batch (C,), background included."""
        c = logits.shape[1]
        pred = torch.nn.functional.one_hot(logits.detach().argmax(1), c).float()
        y = torch.nn.functional.one_hot(label.long(), c).float()
        dims = tuple(range(pred.dim() - 1))
        tp = (pred * y).sum(dims)
        fp = (pred * (1 - y)).sum(dims)
        fn = ((1 - pred) * y).sum(dims)
        return ((2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)).cpu()

    def update_from_dice(self, dice: torch.Tensor) -> torch.Tensor:
        delta = dice - self.last_dice
        ratio = torch.log(dice / self.last_dice)
        cur_learn = torch.where(delta > 0, delta, torch.zeros_like(delta)) * ratio
        cur_unlearn = torch.where(delta <= 0, delta, torch.zeros_like(delta)) * ratio
        self.last_dice = dice
        self.learn = ema(cur_learn, self.learn, self.momentum)
        self.unlearn = ema(cur_unlearn, self.unlearn, self.momentum)
        diff = torch.pow((self.unlearn + 1e-8) / (self.learn + 1e-8), 1 / 5)
        self.dice_weight = ema(1.0 - dice, self.dice_weight, self.momentum)
        w = diff * self.dice_weight
        self.weights = w / w.max() * self.num_classes
        return self.weights

    def update(self, labeled_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.update_from_dice(self.hard_dice(labeled_logits, label))


def _counts(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    pred = logits.detach().argmax(1).reshape(-1).cpu()
    return torch.bincount(pred, minlength=num_classes)[:num_classes].double()


class CReST(Weighting):
    """Class-rebalancing weights of CReST (Wei et al., 2021) as in DHC's train_crest.py."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        super().__init__(num_classes)
        self.momentum = momentum

    @staticmethod
    def formula(counts) -> torch.Tensor:
        n = torch.as_tensor(counts, dtype=torch.float64)
        mu = torch.pow((n + 1e-8) / (n.max() + 1e-8), 1 / 3)
        order = torch.argsort(mu, descending=True, stable=True)
        w = torch.empty_like(mu)
        w[order] = mu[order.flip(0)]
        return w.float()

    def init(self, labeled_counts) -> torch.Tensor:
        self.weights = self.formula(labeled_counts)
        return self.weights

    def update(self, logits: torch.Tensor) -> torch.Tensor:
        self.weights = ema(self.formula(_counts(logits, self.num_classes)), self.weights, self.momentum)
        return self.weights


class SimiS(Weighting):
    """Frequency-gap weights of SimiS (Chen et al., 2022) as in DHC's train_simis.py."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        super().__init__(num_classes)
        self.momentum = momentum

    def formula(self, counts) -> torch.Tensor:
        n = torch.as_tensor(counts, dtype=torch.float64)
        p = (n + 1e-8) / (n.sum() + 1e-8)
        return ((p.max() - p) * self.num_classes).float()

    def init(self, labeled_counts) -> torch.Tensor:
        self.weights = ema(self.formula(labeled_counts), torch.full((self.num_classes,), float(self.num_classes)), self.momentum)
        return self.weights

    def update(self, logits: torch.Tensor) -> torch.Tensor:
        self.weights = ema(self.formula(_counts(logits, self.num_classes)), self.weights, self.momentum)
        return self.weights


class InverseFrequency(Weighting):
    """Static weights ``w_c = (N_max / N_c)^(1/3)`` from the labeled voxel counts.

    The class weight of DHC's ``train_cld.py`` (its dataset's ``weight()``), used there for the
    supervised Dice + CE and the cross-pseudo CE. Not updated during training.
    """

    @staticmethod
    def formula(counts) -> torch.Tensor:
        n = torch.as_tensor(counts, dtype=torch.float64)
        return torch.pow((n.max() + 1e-8) / (n + 1e-8), 1 / 3).float()

    def init(self, labeled_counts) -> torch.Tensor:
        self.weights = self.formula(labeled_counts)
        return self.weights
