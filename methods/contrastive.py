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
    """Up to ``n_view`` random voxels per (image, class).

    features (B, N, F) voxel features; labels (B, N). Returns (anchors (M, F), labels (M,)).
    """
    feats, labs = [], []
    for b in range(features.shape[0]):
        lb = labels[b]
        for cls in torch.unique(lb):
            if int(cls) == ignore:
                continue
            idx = (lb == cls).nonzero().squeeze(1)
            if idx.numel() > n_view:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:n_view]]
            feats.append(features[b, idx])
            labs.append(torch.full((idx.numel(),), int(cls), device=features.device, dtype=torch.long))
    if not feats:
        return features.new_zeros((0, features.shape[-1])), labels.new_zeros((0,), dtype=torch.long)
    return torch.cat(feats), torch.cat(labs)


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
