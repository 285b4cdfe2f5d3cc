"""DeSCO (Cai et al., CVPR 2023): dense-sparse co-training of two view-specific V-Nets, as
released in HengCai-NJU/DeSCO ``code/train_desco.py`` (commit d3f0852), carried to fully
labelled multi-organ CT.

Two V-Nets, ``seg1`` (the axial view's network, the release's ``m_seg1``) and ``seg2`` (the
coronal view's, ``m_seg2``), are trained one after the other in every step, each with its own
SGD. Network k with the other network o, labeled images ``x_l`` (n_l, 1, D, H, W), labels ``y``
(n_l, D, H, W), unlabeled images ``x_u`` (n_u, 1, D, H, W), logits (B, C, D, H, W)::

    out      = k([x_l; x_u])
    sup_k    = 0.5 (wCE(out_l, y; w_k) + wDice(softmax out_l, y; w_k))
    ŷ        = argmax o(x_u)                           (o in train mode, no gradient)
    u        = H(mean_T softmax o(x_u + clamp(0.1 N, ±0.2)))   (T = 8 noisy passes of o)
    m        = [u < (0.75 + 0.25 sigmoid_rampup(t, T_run)) u_max]
    cons_k   = wCE(out_u, ŷ; m)
    loss_k   = (1 - λ(t)) sup_k + λ(t) cons_k,   λ(t) = 0.1 sigmoid_rampup(t // 150, 40)

then ``seg1`` steps, and only then ``seg2`` computes its loss (its pseudo-labels and
uncertainty come from the updated ``seg1``), as the release's loop does
(train_desco.py:196-296). ``wCE`` is the release's ``losses.wce``::

    wCE(z, y; w) = - mean_b (Σ_v K w_v log softmax(z)_{y_v} - 1e-5) / (Σ_v K w_v + 1e-5)

(the release multiplies by the weight map repeated over its K = 2 class channels; here K = C),
and ``wDice`` its ``dice_loss_weight`` (batch-pooled, squared denominators, smooth 1e-5) with
the mean over the foreground classes. Optimiser: SGD lr 0.01, momentum 0.9, weight decay 1e-4,
no Nesterov, per network; lr x 0.1 every 2500 steps. Networks: the release's V-Net (BatchNorm,
Dropout3d 0.5 on the bottleneck and the last decoder map; PyTorch's default init, the
initialiser in vnet.py is commented out). Inference: ``seg1`` alone, as ``test_desco.py``
loads ``iter_<N>.pth`` (``m_seg1``'s file, test_desco.py:68-69; ``predict_with="mean"`` averages both).

Kept as released, though odd: each half of the step draws a noise map for the unlabeled images
and never uses it (train_desco.py:202, 254; drawn here too, so one seeded step reproduces the
release's random stream: ``tests/test_released_desco.py``); the other network's pseudo-label and
noisy passes run in train mode (dropout on, BatchNorm statistics updated); ``wCE`` with an
all-zero mask is 1, not 0 (no gradient). T_run is the run's length (``max_iterations``).

Adapted, not released
---------------------
* **Full labels replace registration-propagated sparse labels** (``supervision="full"``, the
  default): the release trains from two annotated orthogonal slices per labeled volume, whose
  labels ``registration.py`` propagates to the other slices (one propagation per view, one
  network per view), weighted per voxel by ``slice_weight ** distance`` from the annotated slice
  of the network's view (1 on both annotated slices; ``la_heart.py`` LARandomCrop1/2). The suite
  gives every labeled volume its full label, so no propagation is needed and every voxel has
  weight 1: both networks get the same dense supervision.
* ``supervision="weighted"``: the release's view-specific weight maps on the true labels
  (``seg1``: ``slice_weight ** |d - D//2|`` along the axial axis, coronal slice ``H//2`` set to 1;
  ``seg2``: ``slice_weight ** |h - H//2|``, axial slice ``D//2`` set to 1), with the release's
  schedule (0.95, then ``cosine_rampdown(t // 150, 40)`` refreshed every 1000 steps). The
  annotated slices are the patch's central ones (the release fixes them in the whole volume,
  e.g. slice 43 of LA, so a random crop may miss them); the suite's flips keep the planes (the
  release's rot90 may turn the coronal plane sagittal).
* ``supervision="sparse"``: barely-supervised without registration: only the central axial and
  coronal slices of each labeled patch are supervised (weight 1 there, 0 elsewhere) for both
  networks (= ``weighted`` with slice weight 0).
* **C classes**: softmax over C classes; the release's binary pieces are generalised where they
  hard-code two classes: the weight maps repeated over C channels (release: 2), the Dice the
  mean over the C - 1 foreground classes (release: class 1), the uncertainty threshold a
  fraction of ln C (``entropy_max="classes"``; ``"ln2"``: the release's ln 2). With C = 2 each is
  the release's.
* **One batch for both networks**: the release gives each network its own loader (own cases,
  own crops); here both see the engine's batch. Any n_l, n_u (the release's ``wce`` takes
  ``labeled_bs`` as the unlabeled batch size, so it needs n_l = n_u).
* **Schedules in steps**: ``lr_step`` (2500), ``consistency_epoch`` (150) are absolute step counts
  as released (its run: 6000 steps); ``consistency_epoch="run"`` ramps over the run instead.
* **Dropout off by default** (``dropout=false``, the suite's V-Net default at CPU widths); the
  release has it on (``configs/desco_synapse_20p.toml`` sets ``dropout = true``).

Released bug, fixed here
------------------------
The lr decay (train_desco.py:339-343) sets the lr of ``optimizer1`` only: ``seg2`` trains at
0.01 for the whole run while ``seg1`` decays to 1e-4. Both decay here;
``released_lr_decay_seg1_only=true`` restores the release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.ema import teacher_noise
from methods.losses import one_hot
from methods.ramps import sigmoid_rampup
from methods.supervised import BackboneHparams, build_vnet

#: the two networks, in the order they step (the release's m_seg1, m_seg2)
NETS = ("seg1", "seg2")


def cosine_rampdown(current: float, length: float) -> float:
    """0.5 (cos(pi t / length) + 1), t clipped to [0, length] (Loshchilov & Hutter; the release's
    ``ramps.cosine_rampdown`` asserts 0 <= t <= length instead of clipping).

    >>> cosine_rampdown(0, 40), cosine_rampdown(20, 40), cosine_rampdown(40, 40)
    (1.0, 0.5, 0.0)
    """
    t = min(max(current, 0.0), length)
    return float(0.5 * (math.cos(math.pi * t / length) + 1.0)) if length > 0 else 0.0


def desco_wce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """The release's ``losses.wce``: ``- mean_b (Σ_v K w log p_{y} - 1e-5) / (Σ_v K w + 1e-5)``.

    logits (B, C, D, H, W), target (B, D, H, W) long, weight (B, D, H, W); ``channels`` K: how
    many times the release's weight map is repeated over the class channels before it multiplies
    the (broadcast) log-probabilities (2 in the release's binary setting). With an all-zero
    weight map a sample contributes -(-1e-5 / 1e-5) = 1 (no gradient).
    """
    b = logits.shape[0]
    logp = F.log_softmax(logits.float(), 1).gather(1, target.long().unsqueeze(1))[:, 0]
    w = weight.float()
    num = channels * (logp * w).reshape(b, -1).sum(1)
    den = channels * w.reshape(b, -1).sum(1)
    return -((num - 1e-5) / (den + 1e-5)).mean()


def desco_dice(probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the foreground classes c >= 1 of the release's ``dice_loss_weight``:
    ``1 - (2 Σ p_c y_c w + 1e-5) / (Σ p_c² w + Σ y_c² w + 1e-5)`` (sums over batch and space).

    probs (B, C, D, H, W), target (B, D, H, W), weight (B, D, H, W).
    """
    c = probs.shape[1]
    y = one_hot(target, c)
    w = weight.float().unsqueeze(1)
    dims = (0, 2, 3, 4)
    inter = (probs * y * w).sum(dims)
    y_sum = (y * y * w).sum(dims)
    z_sum = (probs * probs * w).sum(dims)
    per_class = 1.0 - (2 * inter + 1e-5) / (z_sum + y_sum + 1e-5)
    return per_class[1:].mean()


def mean_entropy(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``-Σ_c p log(p + eps)`` over the class axis: (B, C, ...) -> (B, 1, ...)."""
    return -(probs * torch.log(probs + eps)).sum(1, keepdim=True)


def view_weight(shape: tuple[int, int, int], view: str, slice_weight: float) -> torch.Tensor:
    """Per-voxel weight (D, H, W) of a view's supervision, the release's LARandomCrop1 / 2 with
    the annotated slices at the patch's centre: ``view="axial"`` (seg1): ``slice_weight ** |d -
    D//2|``, coronal slice ``H//2`` = 1; ``"coronal"`` (seg2): ``slice_weight ** |h - H//2|``,
    axial slice ``D//2`` = 1. ``slice_weight=0``: the two annotated slices only.
    """
    d, h, w = shape
    if view == "axial":
        dist = (torch.arange(d, dtype=torch.float64) - d // 2).abs().view(d, 1, 1)
    elif view == "coronal":
        dist = (torch.arange(h, dtype=torch.float64) - h // 2).abs().view(1, h, 1)
    else:
        raise ValueError(f"view must be 'axial' or 'coronal', not {view!r}")
    out = torch.pow(torch.tensor(slice_weight, dtype=torch.float64), dist).expand(d, h, w).clone()
    if view == "axial":
        out[:, h // 2, :] = 1.0
    else:
        out[d // 2, :, :] = 1.0
    return out.float()


@register_method("desco")
class DeSCO(Method):
    """DeSCO (Cai et al., CVPR 2023): two view-specific V-Nets co-trained in turn, each on the
    other's argmax where the other's Monte-Carlo uncertainty is low."""

    family = "co-training (uncertainty-masked)"
    paper = "Cai et al., DeSCO: Orthogonal Annotation Benefits Barely-supervised Medical Image Segmentation, CVPR 2023"
    code = "HengCai-NJU/DeSCO"

    #: the two networks step one after the other within a step (seg2 reads the updated seg1)
    manual_optimization = True
    #: train_desco.py:177-178: SGD(lr 0.01, momentum 0.9, weight_decay 1e-4), no Nesterov
    train_defaults = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False}

    @dataclass
    class Hparams(BackboneHparams):
        #: vnet.py's __init_weight is commented out and train_desco.py calls no initialiser
        init: Literal["kaiming", "xavier", "default"] = "default"
        #: λ(t) = consistency sigmoid_rampup(t // consistency_epoch, consistency_rampup)
        #: (train_desco.py:78-80, 229: 0.1, iter_num // 150, 40); "run": sigmoid_rampup(t, run)
        consistency: float = setting(0.1, ge=0.0, le=1.0)
        consistency_rampup: float = setting(40.0, ge=0.0)
        consistency_epoch: int | Literal["run"] = setting(150, ge=1)
        #: Monte-Carlo passes T of the other network (train_desco.py:207-219: 8, two noisy copies a pass)
        passes: int = setting(8, ge=2)
        noise_std: float = setting(0.1, ge=0.0)
        noise_clip: float = setting(0.2, ge=0.0)
        #: maximum entropy of the threshold: ln C ("classes") or the release's ln 2 (binary)
        entropy_max: Literal["classes", "ln2"] = "classes"
        #: "full": every voxel of the labeled volume, weight 1 (the suite's labels); "weighted":
        #: the release's view-specific slice-distance weights on the true labels; "sparse": the
        #: central axial + coronal slice of each labeled patch only (barely-supervised)
        supervision: Literal["full", "weighted", "sparse"] = "full"
        #: "weighted": initial slice weight (--slice_weight 0.95), the step count of its ramp
        #: (--slice_weight_step 150) and how often it is refreshed (the loaders are rebuilt
        #: every 1000 steps, train_desco.py:352-370); rampdown length: consistency_rampup (40)
        slice_weight: float = setting(0.95, ge=0.0, le=1.0)
        slice_weight_step: int = setting(150, ge=1)
        slice_weight_refresh: int = setting(1000, ge=1)
        #: lr x lr_gamma every lr_step steps (train_desco.py:339-343)
        lr_step: int = setting(2500, ge=1)
        lr_gamma: float = setting(0.1, gt=0.0, le=1.0)
        #: inference: "seg1" (test_desco.py loads m_seg1's iter_<N>.pth) or "mean" of both logits
        predict_with: Literal["seg1", "mean"] = "seg1"
        #: True: the release's lr decay of optimizer1 only (seg2 keeps the base lr)
        released_lr_decay_seg1_only: bool = False

    def __init__(self, ctx: MethodContext, **hparams: Any):
        super().__init__(ctx, **hparams)
        for k in NETS:  # create_model() twice (train_desco.py:111-112)
            self.networks[k] = build_vnet(ctx, self.hp)

    # -- schedules ------------------------------------------------------------------------
    def optimizers(self, train: Any) -> dict:
        """One SGD per network (train_desco.py:177-178), each with the step decay
        ``lr gamma ** (t // lr_step)``; seg2's stays at ``lr`` with ``released_lr_decay_seg1_only``."""
        out = {}
        for k in NETS:
            opt = torch.optim.SGD(self.networks[k].parameters(), lr=train.lr, momentum=train.momentum,
                                  weight_decay=train.weight_decay, nesterov=train.nesterov and train.momentum > 0)
            out[k] = (opt, self._lr_schedule(train.lr, decay=not (k == "seg2" and self.hp.released_lr_decay_seg1_only)))
        return out

    def _lr_schedule(self, base: float, decay: bool):
        step_len, gamma = self.hp.lr_step, self.hp.lr_gamma
        if not decay:
            return lambda step: base
        return lambda step: base * gamma ** (step // step_len)

    def consistency_weight(self, step: int) -> float:
        """λ(t) = consistency sigmoid_rampup(t // consistency_epoch, consistency_rampup)."""
        if self.hp.consistency_epoch == "run":
            return self.hp.consistency * sigmoid_rampup(step, self.ctx.iterations)
        return self.hp.consistency * sigmoid_rampup(step // self.hp.consistency_epoch, self.hp.consistency_rampup)

    def uncertainty_threshold(self, step: int) -> float:
        """(0.75 + 0.25 sigmoid_rampup(t, T_run)) u_max (train_desco.py:230)."""
        u_max = math.log(self.ctx.num_classes) if self.hp.entropy_max == "classes" else math.log(2)
        return (0.75 + 0.25 * sigmoid_rampup(step, self.ctx.iterations)) * u_max

    def slice_weight_at(self, step: int) -> float:
        """The slice weight the release's loaders use at step t: ``slice_weight`` until the first
        refresh, then ``cosine_rampdown(r // slice_weight_step, consistency_rampup)`` with r the
        last refresh (a multiple of ``slice_weight_refresh``)."""
        hp = self.hp
        r = (step // hp.slice_weight_refresh) * hp.slice_weight_refresh
        if r == 0:
            return hp.slice_weight
        return cosine_rampdown(r // hp.slice_weight_step, hp.consistency_rampup)

    def supervision_weight(self, net: str, label: torch.Tensor, step: int) -> torch.Tensor:
        """Per-voxel weight (B, D, H, W) of network ``net``'s supervised loss on ``label``."""
        if self.hp.supervision == "full":
            return torch.ones(label.shape, device=label.device)
        sw = 0.0 if self.hp.supervision == "sparse" else self.slice_weight_at(step)
        w = view_weight(tuple(label.shape[1:]), "axial" if net == "seg1" else "coronal", sw)
        return w.to(label.device).expand(label.shape).contiguous()

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def uncertainty(self, net: torch.nn.Module, x_u: torch.Tensor) -> torch.Tensor:
        """Entropy (n_u, 1, D, H, W) of the mean softmax of ``passes`` noisy passes of ``net``
        (train_desco.py:207-219: ``passes // 2`` passes of two noisy copies of the batch)."""
        n = x_u.shape[0]
        x_r = x_u.repeat(2, 1, 1, 1, 1)
        reps = self.hp.passes // 2
        acc = 0.0
        for _ in range(reps):
            p = torch.softmax(net(teacher_noise(x_r, self.hp.noise_std, self.hp.noise_clip)).float(), 1)
            acc = acc + p[:n] + p[n:]
        return mean_entropy(acc / (2 * reps))

    def network_loss(self, k: str, labeled: dict, unlabeled: dict | None, step: int) -> dict[str, torch.Tensor]:
        """Network ``k``'s loss against the other network (train_desco.py:196-239 for seg1,
        247-290 for seg2): ``loss``, ``sup``, ``cons`` and the uncertainty ``mask`` share."""
        o = NETS[1 - NETS.index(k)]
        y = labeled["label"]
        n_l = y.shape[0]
        x_u = unlabeled["image"] if unlabeled is not None else None
        if x_u is not None:
            torch.randn_like(x_u)  # the release draws (and never uses) a noise map here: same random stream
        x = torch.cat([labeled["image"], x_u]) if x_u is not None else labeled["image"]
        out = self.networks[k](x)
        C = out.shape[1]
        w_sup = self.supervision_weight(k, y, step)
        probs = torch.softmax(out[:n_l].float(), 1)
        sup = 0.5 * (desco_wce(out[:n_l], y, w_sup, C) + desco_dice(probs, y, w_sup))
        lam = self.consistency_weight(step)
        if x_u is None:
            zero = out.sum() * 0.0
            return {"loss": (1 - lam) * sup, "sup": sup, "cons": zero, "mask": zero.detach()}
        with torch.no_grad():
            other = self.networks[o]
            target = other(x_u).float().argmax(1)
            mask = (self.uncertainty(other, x_u) < self.uncertainty_threshold(step)).float()[:, 0]
        cons = desco_wce(out[n_l:], target, mask, C)
        return {"loss": (1 - lam) * sup + lam * cons, "sup": sup, "cons": cons, "mask": mask.mean()}

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int, opt: Any = None) -> Losses:
        """seg1's loss, backward, step; then seg2's (with the updated seg1). ``opt``: the engine's
        step control; None (outside the engine): both losses from the current weights, no step,
        ``total`` back-propagates to both networks."""
        parts = {}
        for k in NETS:
            r = self.network_loss(k, labeled, unlabeled, step)
            if opt is not None:
                opt.zero_grad(k)
                opt.backward(r["loss"], name=f"loss_{k}")
                opt.step(k)
                r = {n: v.detach() for n, v in r.items()}
            parts[k] = r
        a, b = parts["seg1"], parts["seg2"]
        lam = self.consistency_weight(step)
        out = {"sup": a["sup"] + b["sup"], "unsup": a["cons"] + b["cons"], "w_unsup": torch.tensor(lam),
               "certain": (a["mask"] + b["mask"]) / 2}
        for k, r in parts.items():
            out.update({f"loss_{k}": r["loss"], f"sup_{k}": r["sup"], f"unsup_{k}": r["cons"], f"certain_{k}": r["mask"]})
        return Losses(a["loss"] + b["loss"], out)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.hp.predict_with == "mean":
            return (self.networks["seg1"](x) + self.networks["seg2"](x)) / 2
        return self.networks["seg1"](x)

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "consistency": trial.suggest_float("consistency", 0.01, 0.5, log=True)}
