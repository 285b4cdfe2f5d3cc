"""TAK's voxel-text supervised contrastive loss (``loss_amos.ContrastiveLoss``).

At each scale: labels are resized to the feature map (nearest); for each image and class up
to ``n_view`` voxels are sampled (ignore label -1 excluded); the text vectors of every view
join the anchor set with their class labels; all anchors are L2-normalised; a SupCon-style
loss with temperature τ treats every same-class pair (voxel-voxel, voxel-text, text-text) as
positive: for anchor i and positive j, ``-log(exp(l_ij) / (exp(l_ij) + Σ_neg exp(l_ik)))``,
averaged over the positives of i, then over anchors (an anchor without positives adds 0 but
counts, as released). The loss is summed over scales.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def sample_anchors(features: torch.Tensor, labels: torch.Tensor, n_view: int, ignore: int = -1):
    """Up to ``n_view`` random voxels per (image, class), drawn uniformly without replacement.

    features (B, N, F) voxel features; labels (B, N). Returns (anchors (M, F), labels (M,)).
    Vectorised: voxels are ordered by (image, class, random key) and the first ``n_view`` of
    each (image, class) group are kept (the released code loops with randperm per class).
    """
    b, n, _ = features.shape
    lab = labels.reshape(-1).long()
    img = torch.arange(b, device=labels.device).repeat_interleave(n)
    keep = lab != ignore
    lab, img, idx = lab[keep], img[keep], torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return features.new_zeros((0, features.shape[-1])), labels.new_zeros((0,), dtype=torch.long)
    n_cls = int(lab.max()) + 1
    group = img * n_cls + lab
    # sort by group, random order inside each group
    key = group.double() + torch.rand(group.shape, device=group.device, dtype=torch.float64) * 0.5
    order = torch.argsort(key)
    group, idx, lab = group[order], idx[order], lab[order]
    start = torch.ones_like(group, dtype=torch.bool)
    start[1:] = group[1:] != group[:-1]
    first = torch.cummax(torch.where(start, torch.arange(group.numel(), device=group.device), torch.zeros_like(group)), 0).values
    rank = torch.arange(group.numel(), device=group.device) - first
    sel = rank < n_view
    return features.reshape(b * n, -1)[idx[sel]], lab[sel]


def supcon(anchors: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon-style loss of L2-normalised ``anchors`` (M, F) with class ``labels`` (M,)."""
    mask = torch.eq(labels[:, None], labels[None, :]).float()
    sim = anchors @ anchors.T / temperature
    logits = sim - sim.max(dim=1, keepdim=True).values.detach()
    neg_mask = 1 - mask
    self_mask = torch.ones_like(mask)
    self_mask.fill_diagonal_(0)
    pos_mask = mask * self_mask
    exp_logits = torch.exp(logits)
    neg_sum = (exp_logits * neg_mask).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + neg_sum)
    mean_log_prob_pos = (pos_mask * log_prob).sum(1) / (pos_mask.sum(1) + 1e-5)
    return -mean_log_prob_pos.mean()


def voxel_text_contrastive(
    features: Sequence[torch.Tensor],
    labels: torch.Tensor,
    text: Sequence[torch.Tensor],
    text_labels: torch.Tensor,
    n_views: Sequence[int] = (40, 20, 10),
    temperature: float = 0.07,
) -> torch.Tensor:
    """Sum over scales of :func:`supcon` on sampled voxels + text vectors.

    features[s] (B, F_s, d, h, w) projected voxel features; labels (B, 1, D, H, W) long with
    -1 = ignore; text[s] (T, F_s) projected text vectors with class ``text_labels`` (T,).
    """
    loss = features[0].new_zeros((), dtype=torch.float32)
    for feat, txt, n_view in zip(features, text, n_views):
        lab = F.interpolate(labels.float(), size=feat.shape[2:], mode="nearest").long()
        b = feat.shape[0]
        lab = lab.reshape(b, -1)
        f = feat.permute(0, 2, 3, 4, 1).reshape(b, -1, feat.shape[1])
        anc, tgt = sample_anchors(f.float(), lab, n_view)
        anc = F.normalize(torch.cat([anc, txt.float()]), p=2, dim=1)
        tgt = torch.cat([tgt, text_labels.to(tgt.device)])
        loss = loss + supcon(anc, tgt, temperature)
    return loss
