"""GA loss (Qi et al., ECCV 2024; code cicailalala/GALoss), as used by GA and TAK.

* :func:`ga_dice`: for each class present in the target, ``1 - 2 Σ p y / (Σ p² + Σ y²)``;
  for a class absent from the batch, a suppression term ``Σ stopgrad(β) p`` with
  ``β = p / Σ (1 - y)``; summed over classes and divided by C.
* :func:`ga_ce`: per-voxel cross entropy; keep the top ``k`` % hardest voxels; each class's
  summed loss is divided by ``n_c^(1-γ) · K^γ`` (K = kept voxels, n_c = kept voxels of class c);
  the per-class terms are summed (γ = 0.5).

Both follow ``loss_amos.py`` of TAK-Semi line by line (smoothing 1e-10 included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.losses import one_hot

SMOOTH = 1e-10


def ga_dice(probs: torch.Tensor, target: torch.Tensor, gradient_aware: bool = True) -> torch.Tensor:
    """GADice of probabilities ``probs`` (B, C, D, H, W) against labels ``target`` (B, D, H, W).

    With ``gradient_aware=False`` it is MagicNet's ``DiceLoss`` (utils/losses.py:26-33): the same
    term for every class, so a class absent from the target scores ``1 - s / (Σ p² + s)`` ~ 1
    (s = 1e-10) with a gradient of order s.
    """
    c = probs.shape[1]
    if target.dim() == probs.dim():
        target = target[:, 0]
    y = one_hot(target, c).to(probs.dtype)
    dims = (0, *range(2, probs.dim()))
    # all classes at once (the released code loops over classes; the sums are the same)
    inter = 2 * (probs * y).sum(dims) + SMOOTH
    union = (probs * probs).sum(dims) + y.sum(dims) + SMOOTH  # y * y == y
    present = y.sum(dims) > 0
    dice_term = 1 - inter / union
    if gradient_aware:
        # = voxel count for an absent class; clamped so that a class covering every voxel
        # (whose suppression term is unused) cannot put 0/0 into the backward pass
        n_background = (1 - y).sum(dims).clamp_min(1)
        suppress = (probs.detach() * probs).sum(dims) / n_background
    else:
        return dice_term.sum() / c
    return torch.where(present, dice_term, suppress).sum() / c


def ga_ce(logits: torch.Tensor, target: torch.Tensor, k: float = 10.0, gamma: float = 0.5) -> torch.Tensor:
    """GACE of ``logits`` (B, C, D, H, W) against ``target`` (B, D, H, W) or (B, 1, D, H, W)."""
    c = logits.shape[1]
    if target.dim() == logits.dim():
        target = target[:, 0]
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none").reshape(-1)
    n_keep = int(ce.numel() * k / 100)
    res, idx = torch.topk(ce, n_keep, sorted=False)
    kept = target.reshape(-1)[idx]
    bg_w = float(n_keep) ** gamma
    loss = logits.new_zeros((), dtype=torch.float32)
    for i in range(c):
        m = (kept == i).float()
        w = torch.pow(m.sum() + SMOOTH, 1 - gamma) * bg_w
        loss = loss + (res * m).sum() / (w + SMOOTH)
    return loss
