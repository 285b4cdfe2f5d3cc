"""SS-Net (Wu et al., MICCAI 2022): smoothness (VAT) and class separation (prototype memory),
as DHC's ``code/train_ssnet.py`` with ``VNet4SSNet`` (``code/models/vnet.py``) trains it.

One V-Net (DHC's: BatchNorm, Dropout3d(0.5); PyTorch's default init: ``make_model_all`` calls
no initialiser) whose full-resolution decoder map ``e`` (B, n, D, H, W), after the dropout, also
feeds the contrastive heads (feature size f = 2n):

* ``projection_head`` / ``prediction_head``: Linear(n|f, f), BatchNorm1d(f), ReLU, Linear(f, f);
* per class c a feature selector and a memory selector: Linear(f, f), BatchNorm1d(f),
  LeakyReLU(0.2), Linear(f, 1).

One step (labeled images first in the batch x, n_l of them; logits z (B, C, D, H, W)):

1. memory: the labeled voxels predicted correctly as a foreground class; their projections (the
   projection head in eval mode, no gradient) replace, per class, the memory M_c (<= 32 rows,
   (N_c, f)); a class with more than 32 keeps 32 chosen by sigmoid(selector_c(.)) - the highest
   ranked here (the release keeps the lowest: ``released_memory_rank``);
2. class separation, over all labeled voxels (labels) and all unlabeled voxels (argmax
   pseudo-labels), features q = prediction_head(projection_head(e)) (V, f)::

       L_cs = 1/C sum_c mean_{i in c, j} (1 - q̂_i . m̂_j) a_i b_j,
       a_i = M_c sigmoid(s_c(q_i)) / sum_i' sigmoid(s_c(q_i'))    (s_c: feature selector, q detached)
       b_j = N_c sigmoid(r_c(m̂_j)) / sum_j' sigmoid(r_c(m̂_j'))   (r_c: memory selector)

   (x̂ = x / |x|; classes with <= 1 feature or memory row, and every class with an empty memory,
   add 0 but still count in 1/C). The release normalises b over an axis of length 1, so that
   b = w / w = 1 and the memory selectors never learn (``released_memory_weights``);
3. smoothness (VAT, ``VAT3d(epi=10.0)``, xi = 10, one power iteration) on the whole batch::

       p = softmax(net(x)) (no gradient; BatchNorm statistics updated, its own dropout draw)
       d = unit(U(-0.5, 0.5))  per image (L2 over all voxels), g = ∂D(net(x + xi d), p)/∂d
       L_lds = D(softmax(net(x + eps unit(g))), p)     (BatchNorm statistics frozen)

   with D the soft Dice distance 1 - mean_c dice_c (batch Dice, background included, smooth 1e-8);
4. total = L_dice + w(t) (L_lds + 0.1 (L_cs,labeled + L_cs,unlabeled)), L_dice the same soft
   Dice on the labeled images (the release also computes a cross-entropy and never uses it, as SS-Net's
   own code, where only the Dice is the supervised loss), w(t) = ``cps_w`` sigmoid_rampup over the run,
   set once per epoch as every DHC loop (``schedule``).

DHC's ``SoftDiceLoss`` returns -mean Dice; here 1 - mean Dice (the same gradients; logged values
differ by 1). Inference: the network's logits (test.py builds ``VNet4SSNet`` in eval mode).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.losses import one_hot
from methods.networks import VNet
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams


def _head(f_in: int, f: int, out: int, act: nn.Module) -> nn.Sequential:
    """Linear(f_in, f), BatchNorm1d(f), ``act``, Linear(f, out) (VNet4SSNet's heads and selectors)."""
    return nn.Sequential(nn.Linear(f_in, f), nn.BatchNorm1d(f), act, nn.Linear(f, out))


class SSNetVNet(VNet):
    """The suite's V-Net (``methods.networks.VNet``, same backbone as VNet4SSNet) with SS-Net's heads.

    Args:
        in_channels, num_classes, n_filters, normalization, dropout, init: as :class:`VNet`
            (``init`` touches the backbone's Conv3d only; the heads keep PyTorch's Linear init).

    Shapes: ``forward(x)`` (B, in_channels, D, H, W) -> logits (B, num_classes, D, H, W);
    :meth:`features` -> (logits, decoder map (B, n_filters, D, H, W) after dropout);
    ``projection_head``: (V, n) -> (V, 2n); ``prediction_head``: (V, 2n) -> (V, 2n);
    ``selectors[c]`` / ``memory_selectors[c]``: (V, 2n) -> (V, 1) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, n_filters: int, normalization: str = "batchnorm",
                 dropout: bool = False, init: str = "default"):
        super().__init__(in_channels, num_classes, n_filters, normalization, dropout, init)
        n, f = n_filters, 2 * n_filters
        self.projection_head = _head(n, f, f, nn.ReLU(inplace=True))
        self.prediction_head = _head(f, f, f, nn.ReLU(inplace=True))
        self.selectors = nn.ModuleList([_head(f, f, 1, nn.LeakyReLU(0.2, inplace=True)) for _ in range(num_classes)])
        self.memory_selectors = nn.ModuleList([_head(f, f, 1, nn.LeakyReLU(0.2, inplace=True)) for _ in range(num_classes)])

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the decoder map the logits are computed from) - VNet4SSNet's training output."""
        y = self.decode(self.encode(x))
        return self.out_conv(y), y


def l2_normalize(d: torch.Tensor) -> torch.Tensor:
    """``d / (|d| + 1e-8)`` with |d| the L2 norm of each sample over all its other axes
    (train_ssnet.py ``_l2_normalize``); (B, ...) -> (B, ...)."""
    norm = torch.norm(d.reshape(d.shape[0], -1, *([1] * (d.dim() - 2))), dim=1, keepdim=True)  # (B, 1, ...)
    return d / (norm + 1e-8)


def soft_dice_distance(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-8) -> torch.Tensor:
    """1 - mean over all classes (background included) of the batch soft Dice
    ``(2 tp + smooth) / (2 tp + fp + fn + smooth + 1e-8)`` - DHC's ``SoftDiceLoss(smooth=1e-8,
    do_bg=True)`` plus 1. ``probs`` (B, C, ...); ``target`` labels (B, ...) or probabilities
    (B, C, ...) (VAT's soft target)."""
    y = one_hot(target, probs.shape[1]).to(probs) if target.dim() == probs.dim() - 1 else target
    # summed one axis at a time, last first, in the release's order (utils/loss.py sum_tensor): the
    # VAT direction is a gradient of this value, and a bottleneck BatchNorm over few voxels
    # amplifies rounding differences
    def total(t: torch.Tensor) -> torch.Tensor:
        for ax in (*range(probs.dim() - 1, 1, -1), 0):
            t = t.sum(ax)
        return t

    tp = total(probs * y)
    fp = total(probs * (1 - y))
    fn = total((1 - probs) * y)
    dc = (2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)
    return 1 - dc.mean()


@contextlib.contextmanager
def frozen_bn_stats(net: nn.Module) -> Iterator[None]:
    """Norm layers use batch statistics without updating their running ones inside the block
    (train_ssnet.py ``_disable_tracking_bn_stats``; the previous setting is restored)."""
    saved = [(m, m.track_running_stats) for m in net.modules() if hasattr(m, "track_running_stats")]
    for m, _ in saved:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, v in saved:
            m.track_running_stats = v


def vat_loss(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, xi: float = 10.0, eps: float = 10.0,
             iters: int = 1) -> torch.Tensor:
    """SS-Net's smoothness term (train_ssnet.py ``VAT3d``): soft Dice distance between the
    prediction at x (no gradient) and at x + eps r_adv, r_adv the unit direction found by
    ``iters`` power iterations from a uniform random unit vector (step ``xi``). ``net`` maps
    (B, 1, D, H, W) to logits (B, C, D, H, W); the running statistics of its norm layers are
    updated by the clean pass only (``frozen_bn_stats`` when ``net`` is a module)."""
    with torch.no_grad():
        target = torch.softmax(net(x).float(), 1)
    d = l2_normalize(torch.rand(x.shape, device=x.device, dtype=x.dtype) - 0.5)
    frozen = frozen_bn_stats(net) if isinstance(net, nn.Module) else contextlib.nullcontext()
    with frozen:
        for _ in range(iters):
            d.requires_grad_(True)
            dist = soft_dice_distance(torch.softmax(net(x + xi * d).float(), 1), target)
            (grad,) = torch.autograd.grad(dist, d)
            d = l2_normalize(grad.detach())
        return soft_dice_distance(torch.softmax(net(x + eps * d).float(), 1), target)


class FeatureMemory:
    """Per-class memory of projected features (train_ssnet.py ``FeatureMemory``): ``memory[c]``
    is None or (N_c <= size, f); each update replaces the rows of the classes it sees.

    ``lowest=True`` keeps, of a class with more than ``size`` features, the ``size`` with the
    lowest selector score (the release's ascending sort); False the highest (its comment's intent).
    """

    def __init__(self, num_classes: int, size: int = 32, lowest: bool = False):
        self.size, self.lowest = size, lowest
        self.memory: list[torch.Tensor | None] = [None] * num_classes

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, selectors: Sequence[Callable]) -> None:
        """``features`` (V, f) projected, ``labels`` (V,); ``selectors[c]`` (V_c, f) -> (V_c, 1) logits."""
        for c in range(len(self.memory)):
            fc = features[labels == c]
            if fc.shape[0] == 0:
                continue
            if fc.shape[0] > self.size:
                rank = torch.sigmoid(selectors[c](fc))[:, 0]
                order = torch.sort(rank, dim=0, descending=not self.lowest)[1]
                fc = fc[order[: self.size]]
            self.memory[c] = fc.detach().float().clone()

    def state_dict(self) -> dict:
        """The rows of every class (None where empty), copied."""
        return {"memory": [None if m is None else m.detach().clone() for m in self.memory]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s rows."""
        self.memory = [None if m is None else m.clone() for m in state["memory"]]


def class_separation(features: torch.Tensor, labels: torch.Tensor, memory: Sequence[torch.Tensor | None],
                     selectors: Sequence[Callable], memory_selectors: Sequence[Callable],
                     released_memory_weights: bool = False) -> torch.Tensor:
    """SS-Net's contrastive loss against the class memory (train_ssnet.py
    ``contrastive_class_to_class_learned_memory``; formula in the module docstring).

    ``features`` (V, f) predicted features, ``labels`` (V,) classes, ``memory[c]`` (N_c, f) or
    None; ``selectors[c]`` / ``memory_selectors[c]``: (rows, f) -> (rows, 1) logits.
    ``released_memory_weights``: the memory weights as released, ``w / w`` (normalised over an
    axis of length 1: ones, no gradient to the memory selectors)."""
    num_classes = len(memory)
    loss = features.new_zeros(())
    for c in range(num_classes):
        mem = memory[c]
        fc = features[labels == c]
        if mem is None or fc.shape[0] <= 1 or mem.shape[0] <= 1:
            continue
        m = F.normalize(mem.to(fc.device, torch.float32), dim=1)
        dist = 1 - F.normalize(fc.float(), dim=1) @ m.t()  # (M, N), in [0, 2]
        a = torch.sigmoid(selectors[c](fc.detach()).float())  # (M, 1); the features' selector learns from detached features
        a = (a.shape[0] / a.sum(dim=0)) * a  # mean 1 over the M features
        b = torch.sigmoid(memory_selectors[c](m).float()).permute(1, 0)  # (1, N)
        b = (b.shape[0] / b.sum(dim=0)) * b if released_memory_weights else (b.shape[1] / b.sum()) * b
        loss = loss + (dist * a * b).mean()
    return loss / num_classes


@register_method("ss_net")
class SSNet(DHCEpochSchedule, Method):
    """SS-Net: soft Dice + w(t) (VAT smoothness + 0.1 class separation against a feature memory)."""

    family = "smoothness + class separation"
    paper = "Wu et al., SS-Net, MICCAI 2022"
    code = "xmed-lab/DHC"

    #: train_ssnet.py:118-124: SGD(momentum 0.9, weight_decay 3e-5, Nesterov) - Nesterov is the engine's default
    train_defaults = {"weight_decay": 3e-5}

    @dataclass
    class Hparams(BackboneHparams):
        #: train_ssnet.py:110-125 calls no initialiser (:331 commented out): PyTorch's default
        init: Literal["kaiming", "xavier", "default"] = "default"
        #: weight of the unsupervised terms: DHC's driver passes -w (README: 0.1); argparse default 1
        cps_w: float = setting(0.1, ge=0.0)
        #: ramp length as a fraction of the run (DHC's driver passes -r: sigmoid_rampup(epoch,
        #: max_epoch)); 0 = no ramp (the argparse default without -r)
        cps_rampup: float = setting(1.0, ge=0.0)
        #: "epoch": lr and weight set once per epoch, one epoch late (train_ssnet.py:463-464); "step": each step's own
        schedule: Literal["epoch", "step"] = "epoch"
        #: weight of the two class-separation terms inside the ramped sum (train_ssnet.py:436)
        contrast_w: float = setting(0.1, ge=0.0)
        #: rows per class of the feature memory (train_ssnet.py:329)
        memory_size: int = setting(32, ge=2)
        #: VAT: power-iteration step, perturbation size, iterations (VAT3d(epi=10.0), train_ssnet.py:214-216, 342)
        vat_xi: float = setting(10.0, gt=0.0)
        vat_eps: float = setting(10.0, ge=0.0)
        vat_iters: int = setting(1, ge=1)
        #: True: keep the memory's lowest-ranked features as released (ascending sort,
        #: train_ssnet.py:281-286, against its comment "get features with highest rankings")
        released_memory_rank: bool = False
        #: True: memory weights w / w = 1 as released (train_ssnet.py:178-180 normalise over a
        #: transposed axis of length 1; the memory selectors get no gradient)
        released_memory_weights: bool = False

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        hp = self.hp
        self.networks["net"] = SSNetVNet(ctx.in_channels, ctx.num_classes, ctx.width, hp.normalization, hp.dropout, hp.init)
        self.memory = FeatureMemory(ctx.num_classes, hp.memory_size, lowest=hp.released_memory_rank)

    def cps_weight(self, step: int) -> float:
        """``cps_w`` sigmoid_rampup over ``cps_rampup`` x the run, at the step whose value is in force."""
        return self.hp.cps_w * sigmoid_rampup(self.schedule_step(step), self.hp.cps_rampup * self.ctx.iterations)

    def update_memory(self, net: SSNetVNet, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Projections (projection head in eval mode, as train_ssnet.py:396-399) of correctly
        predicted labeled foreground voxels ``feats`` (V, n) with ``labels`` (V,) into the memory."""
        if feats.shape[0] == 0:
            return
        head = net.projection_head
        was = head.training
        head.eval()
        with torch.no_grad():
            proj = head(feats.detach())
        head.train(was)
        self.memory.update(proj, labels, net.selectors)

    def separation(self, net: SSNetVNet, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:func:`class_separation` of voxel features ``feats`` (V, n) through both heads."""
        q = net.prediction_head(net.projection_head(feats))
        return class_separation(q, labels, self.memory.memory, net.selectors, net.memory_selectors, self.hp.released_memory_weights)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        net: SSNetVNet = self.networks["net"]  # type: ignore[assignment]
        y = labeled["label"]
        n_l = y.shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        logits, emb = net.features(x)
        probs = torch.softmax(logits.float(), 1)
        pred = probs.detach().argmax(1)  # labeled: correctness mask; unlabeled: pseudo-labels
        feats = emb.permute(0, 2, 3, 4, 1)  # (B, D, H, W, n)
        correct = (pred[:n_l] == y) & (pred[:n_l] > 0)  # correct foreground only (train_ssnet.py:383)
        self.update_memory(net, feats[:n_l][correct], y[correct])
        sep_l = self.separation(net, feats[:n_l].reshape(-1, feats.shape[-1]), y.reshape(-1))
        sep_u = (self.separation(net, feats[n_l:].reshape(-1, feats.shape[-1]), pred[n_l:].reshape(-1))
                 if unlabeled is not None else torch.zeros((), device=x.device))
        sup = soft_dice_distance(probs[:n_l], y)
        lds = vat_loss(net, x, self.hp.vat_xi, self.hp.vat_eps, self.hp.vat_iters)
        unsup = lds + self.hp.contrast_w * (sep_l + sep_u)
        w = self.cps_weight(step)
        return Losses(sup + w * unsup, {"sup": sup, "unsup": unsup, "lds": lds, "sep_l": sep_l, "sep_u": sep_u,
                                        "w_unsup": torch.tensor(w)})

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks["net"](x)

    def running_state(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "cps_w": trial.suggest_float("cps_w", 0.01, 1.0, log=True),
                "vat_eps": trial.suggest_float("vat_eps", 1.0, 20.0, log=True)}
