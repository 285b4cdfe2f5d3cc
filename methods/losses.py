"""Segmentation losses shared by methods (Dice, CE, consistency)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, D, H, W) long -> (B, C, D, H, W) float."""
    return F.one_hot(label.long(), num_classes).movedim(-1, 1).float()


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-5,
                   squared: bool = False, background: bool = True) -> torch.Tensor:
    """Mean over classes of 1 - (2 Σ p y + eps) / (Σ p + Σ y + eps), sums over batch and space.

    ``probs`` (B, C, D, H, W) probabilities, ``target`` (B, D, H, W) labels; optional
    per-class ``weight`` (C,) (normalised to sum 1, as in DHC's weighted Dice). ``squared``:
    denominator Σ p² + Σ y² (SSL4MIS' ``DiceLoss``); ``background=False``: the mean runs over the
    foreground classes only (DHC's ``SoftDiceLoss``).
    """
    c = probs.shape[1]
    y = one_hot(target, c)
    dims = (0, 2, 3, 4)
    inter = (probs * y).sum(dims)
    denom = ((probs * probs).sum(dims) if squared else probs.sum(dims)) + y.sum(dims)  # y² = y
    per_class = 1.0 - (2 * inter + eps) / (denom + eps)
    if not background:
        per_class = per_class[1:]
        weight = None if weight is None else weight[1:]
    if weight is None:
        return per_class.mean()
    w = weight.to(per_class) / weight.sum().clamp_min(1e-12)
    return (per_class * w).sum()


#: supervised Dice variants of (CE + Dice) / 2: "linear" (Σ p + Σ y over all classes, eps 1e-5),
#: "squared" (SSL4MIS' DiceLoss: Σ p² + Σ y², all classes, smooth 1e-5), "foreground" (DHC's
#: SoftDiceLoss(smooth=1e-8) of train_uamt.py / train_urpc.py: foreground classes only)
DiceVariant = Literal["linear", "squared", "foreground"]
DICE_VARIANTS = get_args(DiceVariant)


def ssl4mis_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         dice: DiceVariant = "linear") -> torch.Tensor:
    """(CE + soft Dice) / 2 - the supervised loss of SSL4MIS and DHC's baselines (optionally class-weighted).

    ``dice`` picks the Dice variant (``DICE_VARIANTS``).
    """
    if dice not in DICE_VARIANTS:
        raise ValueError(f"unknown Dice variant {dice!r}")
    ce = F.cross_entropy(logits.float(), target.long(), weight=None if weight is None else weight.float())
    probs = torch.softmax(logits.float(), 1)
    if dice == "foreground":
        dc = soft_dice_loss(probs, target, weight, eps=1e-8, background=False)
    else:
        dc = soft_dice_loss(probs, target, weight, squared=dice == "squared")
    return 0.5 * (ce + dc)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of softmax outputs (Mean Teacher's consistency); teacher detached."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), torch.softmax(teacher_logits.detach().float(), 1))


def dhc_dc_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """DHC's DC_and_CE_loss: weighted CE + (- mean over foreground classes of w_c x soft Dice_c).

    logits (B, C, D, H, W), target (B, D, H, W); Dice over batch and space, smooth 1.
    """
    w = None if weight is None else weight.to(logits.device, torch.float32)
    ce = F.cross_entropy(logits.float(), target.long(), weight=w)
    p = torch.softmax(logits.float(), 1)
    y = one_hot(target, logits.shape[1])
    dims = (0, 2, 3, 4)
    tp = (p * y).sum(dims)
    fp = (p * (1 - y)).sum(dims)
    fn = ((1 - p) * y).sum(dims)
    dc = (2 * tp + 1.0) / (2 * tp + fp + fn + 1.0 + 1e-8)
    dc = dc[1:] * (w[1:] if w is not None else 1.0)
    return ce - dc.mean()
