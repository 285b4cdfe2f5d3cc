"""Co-BioNet (Peiris et al., "Uncertainty-guided dual-views for semi-supervised volumetric
medical image segmentation", Nature Machine Intelligence 2023), following its released code
(himashi92/Co-BioNet @ 9dbe5a4, ``code/train_cobionet_semi.py``; LA / Pancreas, binary).

Two V-Nets ("views", ``seg1`` / ``seg2``: BatchNorm, Dropout3d(0.5), PyTorch's default init) and
two critics (``critic1`` / ``critic2``: four 1x1x1 conv - BatchNorm - LeakyReLU(0.2) layers,
16-32-64-1 channels, no bias; a voxel-wise confidence map after a sigmoid). One step, in the
released order (train_cobionet_semi.py:151-266):

1. each segmenter runs three forward passes: labeled images, unlabeled images, and the whole
   batch (labeled + unlabeled, for its critic) - separate BatchNorm batch statistics each;
2. ``sup_k = lamda (CE_k + Dice_k)`` on the labeled images;
3. ``diff_k = CE(p_k^u, p_j^u)`` against the other view's detached unlabeled probabilities;
4. the uncertainty: ``M_k = [sigmoid(critic_j(p_j^u)) > t_m]`` - the *other* view's critic
   scores the other view's unlabeled prediction; ``masked_k = mean(M_k CE(p_k^u, p_j^u))``;
5. ``gen_k = BCE(sigmoid(critic_k(p_k^all)), 1)`` (generator term, reaches segmenter k and, as
   released, critic k's gradient buffers, cleared before the critic's own step);
6. ``loss_k = sup_k + w(t) (diff_k + masked_k + mu gen_k)``; backward and SGD step of segmenter
   1, then of segmenter 2 (two backward passes, :197-200 / :222-225);
7. critic k: ``0.5 (BCE(sigmoid(critic_k(onehot(y))), 1) + BCE(sigmoid(critic_k(p_k^all)), 0))``
   (real = the labels, fake = view k's whole-batch prediction, detached), AdamW step of critic
   1, then of critic 2 (:246-266);
8. ``w(t) = consistency sigmoid_rampup((t + 1) // 150, 40)`` (the released ``iter_num`` is
   incremented before the weight is read, :176-177).

Optimisers (:116-120, 133-136), all four stepped and scheduled per iteration: segmenters SGD(lr 0.01,
momentum 0.9, weight decay 1e-4, no Nesterov) - the run's ``lr`` / ``momentum`` /
``weight_decay`` / ``nesterov`` with those as this method's defaults; critics AdamW(lr 1e-4,
betas (0.9, 0.999), eps 1e-8, weight decay 0.01 - PyTorch's AdamW defaults). Schedules:
``CosineAnnealingLR(T_max=max_epoch)`` stepped every *iteration* although ``max_epoch =
max_iterations // len(trainloader) + 1`` (:128) counts epochs, and the released epoch is one pass over
the *labeled* cases (``TwoStreamBatchSampler.__len__`` = n_labeled // labeled_bs, dataset.py:364):
``lr(t) = base (1 + cos(pi t / T_max)) / 2``, a cosine that goes down and back up every
2 T_max iterations (Pancreas: T_max = 15000 // 6 + 1 = 2501, three half-periods). Kept as
released (``cosine_t_max="released"``); ``cosine_t_max="run"`` decays once over the run, an
int sets T_max. The released T_max needs the number of labeled cases: ``ctx.n_labeled`` /
``ctx.labeled_bs`` (the engine passes them; a context without them, n_labeled = 0, falls back
to the suite's epoch ``ctx.epoch_length``).

Inference (``utils/test_patch_ensemble.py:62-66``, sigmoid :148): the two views' probability maps averaged;
``predict`` returns the log of that mean (softmax gives it back; argmax = the released
``> 0.5`` in the binary form). Its largest-connected-component post-processing (:68) is the
evaluation protocol's business and is not part of ``predict``.

Released bugs (default: fixed; ``released_<what>=True`` reproduces the release):

* ``released_critic_detach``: the critic loss is ``loss_adversarial.clone().detach()
  .requires_grad_(True)`` (:246-247), a leaf with no path to the critics, so the critics never
  train (their AdamW steps see ``grad=None`` and skip every parameter: measured, the goldens'
  critics after a step equal their initial weights). Fixed: the same loss value, computed on
  the detached segmenter prediction, back-propagated into the critic.
* ``released_diff_item``: ``loss_diff1`` / ``loss_diff2`` return ``loss.mean().item()``
  (utils/losses.py:87, 98), a float: the diff term is logged and added to the loss but sends
  no gradient. Fixed: a tensor.
* ``released_mask_after_mean``: ``loss_mask`` multiplies the mask by the *mean* BCE
  (``BCELoss()`` reduces first, utils/losses.py:114-118): the loss is (share of confident
  voxels) x (unmasked mean CE) and selects no voxel. Fixed: voxel-wise ``mean(M CE)``.

Adapted, not released (multi-organ CT, C classes, fully labelled volumes; the release is binary):

* ``output="softmax"`` (default): C output channels and softmax where the release has one
  channel and a sigmoid (``output="sigmoid"``, num_classes = 2 only, is the released form).
* supervised CE: ``F.cross_entropy`` over C classes (released: ``BCELoss`` on the foreground
  sigmoid); Dice: mean over the C - 1 foreground classes of ``1 - (2 Σ p y + 1e-5) /
  (Σ p + Σ y + 1e-5)`` (released: the same on the single foreground channel, dice_loss).
* diff and masked CE: the soft cross-entropy ``-Σ_c q_c log p_c`` against the other view's
  softmax ``q`` (released: BCE of sigmoid probabilities, which this is for C = 2); the diff
  term's ``p`` clamped to [1e-8, 1 - 1e-7] and the masked term's ``log p`` to >= -100 as the
  release's clamp and ``BCELoss`` do; with C = 2 it equals the released binary form.
* the uncertainty: critics take the C-channel softmax (released: 1 channel) and keep one output
  channel, so ``M = [sigmoid(critic(p)) > t_m]`` is one voxel-wise mask for all classes.
* the critics' real input is the one-hot label (C channels; released: the 0/1 label map).
* released ``loss_diff`` loops over channels keeping only the last one (utils/losses.py:83-85):
  harmless with one channel; not carried to C channels.
* AMP: the release is fp32; here the engine's ``amp`` applies (the losses run in fp32 outside
  autocast; ``configs/co_bionet_synapse_20p.toml`` sets ``amp = false``).

Not reproduced: data loading, the validation every 100 iterations with best-checkpoint
selection (:280-330; the suite evaluates its own way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.losses import one_hot, soft_dice_loss
from methods.networks import VNet
from methods.ramps import sigmoid_rampup
from methods.supervised import BackboneHparams

#: the released diff term's clamp of the prediction (utils/losses.py:84)
DIFF_CLAMP = (1e-8, 1 - 1e-7)
#: ``BCELoss`` clamps each log at -100
LOG_FLOOR = -100.0


class Critic(nn.Module):
    """Co-BioNet's voxel-wise critic (networks/critic.py, ``Discriminator``): four 1x1x1 conv
    (no bias) - BatchNorm - LeakyReLU(0.2) layers with 16, 32, 64 and 1 output channels.

    Shapes: (B, in_channels, D, H, W) probabilities -> (B, 1, D, H, W) scores (before the sigmoid
    the caller applies).
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (16, 32, 64, 1)):
        super().__init__()
        layers = []
        cin = in_channels
        for cout in channels:
            layers.append(nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout), nn.LeakyReLU(0.2, inplace=True)))
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def cosine_lr(base: float, step: int, t_max: int) -> float:
    """``CosineAnnealingLR`` (eta_min 0) after ``step`` scheduler steps, in closed form:
    ``base (1 + cos(pi step / t_max)) / 2`` - periodic with period 2 t_max past t_max.

    >>> cosine_lr(0.01, 0, 4), cosine_lr(0.01, 4, 4), cosine_lr(0.01, 8, 4)
    (0.01, 0.0, 0.01)
    """
    return base * (1.0 + math.cos(math.pi * step / t_max)) / 2.0


def soft_ce(p: torch.Tensor, q: torch.Tensor, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Voxel-wise cross-entropy ``-Σ_c q_c log p_c`` of probabilities ``p`` against targets ``q``
    (both (B, C, D, H, W)) -> (B, D, H, W). ``clamp``: ``p`` clamped to [lo, hi] first (the
    released diff term); else ``log p`` is floored at -100 (``BCELoss``)."""
    logp = torch.log(p.clamp(*clamp)) if clamp is not None else torch.log(p).clamp_min(LOG_FLOOR)
    return -(q * logp).sum(1)


def binary_ce(p: torch.Tensor, q: torch.Tensor, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Voxel-wise ``BCELoss(reduction="none")`` of foreground probabilities ``p`` against ``q``
    (both (B, 1, D, H, W)) -> (B, D, H, W); ``clamp`` as in :func:`soft_ce`."""
    p = p.clamp(*clamp) if clamp is not None else p
    return F.binary_cross_entropy(p[:, 0], q[:, 0], reduction="none")


@register_method("co_bionet")
class CoBioNet(Method):
    """Co-BioNet: two V-Net views, each with a voxel-wise critic whose confidence masks the
    cross-view loss of the other view; segmenters and critics stepped by four optimisers."""

    family = "co-training (adversarial)"
    paper = "Peiris et al., Co-BioNet, Nature Machine Intelligence 2023"
    code = "himashi92/Co-BioNet"

    manual_optimization = True
    #: train_cobionet_semi.py:116-117: SGD(lr 0.01, momentum 0.9, weight_decay 1e-4), no Nesterov
    train_defaults = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False}

    @dataclass
    class Hparams(BackboneHparams):
        #: released net_factory: VNet(..., has_dropout=True), no initialiser called
        init: Literal["kaiming", "xavier", "default"] = "default"
        #: "softmax": C channels (adapted, not released); "sigmoid": the released binary form
        #: (one foreground channel), num_classes = 2 only
        output: Literal["softmax", "sigmoid"] = "softmax"
        lamda: float = setting(1.0, ge=0.0)  # weight of the supervised terms (--lamda)
        mu: float = setting(0.01, ge=0.0)  # weight of the generator term (--mu)
        t_m: float = setting(0.2, ge=0.0, le=1.0)  # critic confidence threshold (--t_m)
        consistency: float = setting(1.0, ge=0.0)  # --consistency
        consistency_rampup: float = setting(40.0, ge=0.0)  # --consistency_rampup, in ramp epochs
        #: iterations per ramp epoch: w(t) = consistency sigmoid_rampup((t + 1) // 150, 40)
        rampup_epoch: int = setting(150, ge=1)
        critic_lr: float = setting(1e-4, gt=0.0)
        critic_weight_decay: float = setting(0.01, ge=0.0)  # AdamW's default
        #: T_max of the per-iteration cosine schedules: "released" (iterations // epoch + 1 with
        #: the released epoch, see the module docstring), "run" (one decay over the run) or a number
        cosine_t_max: int | Literal["released", "run"] = setting("released", ge=1)
        released_critic_detach: bool = False
        released_diff_item: bool = False
        released_mask_after_mean: bool = False

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        hp = self.hp
        if hp.output == "sigmoid" and ctx.num_classes != 2:
            raise ValueError(f"output='sigmoid' is the released binary form: num_classes must be 2, not {ctx.num_classes}")
        self.out_channels = 1 if hp.output == "sigmoid" else ctx.num_classes
        for k in ("seg1", "seg2"):
            self.networks[k] = VNet(ctx.in_channels, self.out_channels, ctx.width, hp.normalization, hp.dropout, hp.init)
        for k in ("critic1", "critic2"):
            self.networks[k] = Critic(self.out_channels)

    # -- schedules ------------------------------------------------------------------------
    def released_epoch(self) -> int:
        """Steps per released epoch: n_labeled // labeled_bs (TwoStreamBatchSampler) where the
        context says them, else the suite's epoch (``ctx.epoch_length``)."""
        if self.ctx.n_labeled:
            return max(1, self.ctx.n_labeled // max(1, self.ctx.labeled_bs))
        return self.ctx.epoch_length

    def t_max(self) -> int:
        """T_max of the cosine schedules, in iterations (see ``cosine_t_max``)."""
        if self.hp.cosine_t_max == "run":
            return self.ctx.iterations
        if self.hp.cosine_t_max == "released":
            return self.ctx.iterations // self.released_epoch() + 1
        return int(self.hp.cosine_t_max)

    def optimizers(self, train):
        """Four optimisers, each with the per-iteration cosine schedule: ``seg1`` / ``seg2`` SGD,
        ``critic1`` / ``critic2`` AdamW (train_cobionet_semi.py:116-120, 133-136)."""
        t_max, hp = self.t_max(), self.hp
        out = {}
        for k in ("seg1", "seg2"):
            sgd = torch.optim.SGD(self.networks[k].parameters(), lr=train.lr, momentum=train.momentum,
                                  weight_decay=train.weight_decay, nesterov=train.nesterov and train.momentum > 0)
            out[k] = (sgd, lambda s, base=train.lr: cosine_lr(base, s, t_max))
        for k in ("critic1", "critic2"):
            adamw = torch.optim.AdamW(self.networks[k].parameters(), lr=hp.critic_lr, weight_decay=hp.critic_weight_decay)
            out[k] = (adamw, lambda s, base=hp.critic_lr: cosine_lr(base, s, t_max))
        return out

    def consistency_weight(self, step: int) -> float:
        """``consistency sigmoid_rampup((step + 1) // rampup_epoch, consistency_rampup)``."""
        return self.hp.consistency * sigmoid_rampup((step + 1) // self.hp.rampup_epoch, self.hp.consistency_rampup)

    # -- losses ---------------------------------------------------------------------------
    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C', D, H, W) logits -> probabilities (sigmoid of the one channel, or softmax), fp32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.hp.output == "sigmoid" else torch.softmax(logits, 1)

    def ce(self, p: torch.Tensor, q: torch.Tensor, clamp: tuple[float, float] | None = None) -> torch.Tensor:
        """Voxel-wise CE of probabilities ``p`` against ``q`` (B, C', ...) -> (B, D, H, W)."""
        return binary_ce(p, q, clamp) if self.hp.output == "sigmoid" else soft_ce(p, q, clamp)

    def supervised(self, p: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``lamda (CE + Dice)`` of probabilities ``p`` (B, C', ...) against ``label`` (B, D, H, W)."""
        if self.hp.output == "sigmoid":  # train_cobionet_semi.py:164-165
            y = (label == 1).float()
            ce = F.binary_cross_entropy(p[:, 0], label.float())
            dice = 1 - (2 * (p[:, 0] * y).sum() + 1e-5) / (p[:, 0].sum() + y.sum() + 1e-5)
        else:
            ce = F.nll_loss(torch.log(p).clamp_min(LOG_FLOOR), label.long())
            dice = soft_dice_loss(p, label, eps=1e-5, background=False)
        return self.hp.lamda * (dice + ce)

    def diff(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Mean CE of ``p`` against the detached ``q`` (``p`` clamped); a 0-d tensor without
        gradient under ``released_diff_item``."""
        loss = self.ce(p, q.detach(), DIFF_CLAMP).mean()
        return loss.detach() if self.hp.released_diff_item else loss

    def mask(self, critic: nn.Module, q: torch.Tensor) -> torch.Tensor:
        """The uncertainty: ``[sigmoid(critic(q)) > t_m]`` (B, 1, D, H, W), no gradient."""
        with torch.no_grad():
            return (torch.sigmoid(critic(q.detach()).float()) > self.hp.t_m).float()

    def masked(self, p: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``mean(M CE(p, q))`` voxel-wise; ``released_mask_after_mean``: ``mean(M) mean(CE)``."""
        ce = self.ce(p, q.detach())
        if self.hp.released_mask_after_mean:
            return (m * ce.mean()).mean()
        return (m[:, 0] * ce).mean()

    def real_input(self, label: torch.Tensor) -> torch.Tensor:
        """What the critics see as real: the label map (B, 1, ...) or its one-hot (B, C, ...)."""
        return label.unsqueeze(1).float() if self.hp.output == "sigmoid" else one_hot(label, self.ctx.num_classes)

    # -- the step ---------------------------------------------------------------------------
    def training_step(self, labeled: dict, unlabeled: dict | None, step: int, opt=None) -> Losses:
        """One released step. ``labeled``: image (B_l, 1, D, H, W), label (B_l, D, H, W);
        ``unlabeled``: image (B_u, 1, D, H, W). With ``opt`` (the engine's step control) the two
        segmenters and then the two critics are stepped; without it (tests) nothing is stepped
        and ``total`` is differentiable. Parts: ``sup``, ``unsup`` (both views' diff + masked +
        mu gen, unweighted), ``diff``, ``masked``, ``gen``, ``critic``, ``mask`` (share of
        confident voxels) and ``w_unsup``."""
        x_l, y = labeled["image"], labeled["label"]
        x_u = unlabeled["image"] if unlabeled is not None else x_l[:0]
        x_all = torch.cat([x_l, x_u])
        s1, s2, c1, c2 = (self.networks[k] for k in ("seg1", "seg2", "critic1", "critic2"))
        # forward passes in the released order (dropout draws, BatchNorm statistics)
        z1_l, z1_u = s1(x_l), s1(x_u) if x_u.shape[0] else None
        z2_l, z2_u = s2(x_l), s2(x_u) if x_u.shape[0] else None
        z1_all, z2_all = s1(x_all), s2(x_all)
        w = self.consistency_weight(step)
        real = self.real_input(y)
        with _fp32(x_l):
            loss1 = self._view(z1_l, z1_u, z2_u, z1_all, y, c1, c2, real, w)
            loss2 = self._view(z2_l, z2_u, z1_u, z2_all, y, c2, c1, real, w)
        if opt is not None:
            for name, loss in (("seg1", loss1), ("seg2", loss2)):  # train_cobionet_semi.py:197-200, 222-225
                opt.zero_grad(name)
                opt.backward(loss["total"], f"loss_{name}")
                opt.step(name)
            if self.hp.released_critic_detach:  # :249-266: zero_grad, a backward that reaches no critic
                opt.zero_grad("critic1", "critic2")  # (AdamW then skips every parameter: not stepped here)
            else:
                for name, loss in (("critic1", loss1), ("critic2", loss2)):
                    opt.zero_grad(name)  # the generator terms reached the critics' buffers
                    opt.backward(loss["critic"], name)
                    opt.step(name)
        parts = {k: loss1[k] + loss2[k] for k in ("sup", "unsup", "diff", "masked", "gen", "critic")}
        parts["mask"] = (loss1["mask"] + loss2["mask"]) / 2
        parts["w_unsup"] = torch.tensor(w)
        total = loss1["total"] + loss2["total"] + parts["critic"]
        if opt is not None:
            total, parts = total.detach(), {k: v.detach() for k, v in parts.items()}
        return Losses(total, parts)

    def _view(self, z_l, z_u, z_other_u, z_all, y, critic_self, critic_other, real, w) -> dict:
        """View k's terms (train_cobionet_semi.py:158-221): sup, diff, masked, gen, unsup, total
        (``loss_k``), the critic loss and the mask share. Critic forward passes in the released
        order: ``critic_other`` (mask), ``critic_self`` (fake, then real)."""
        sup = self.supervised(self.probs(z_l), y)
        zero = sup.new_zeros(())
        if z_u is not None:
            p_u, q_u = self.probs(z_u), self.probs(z_other_u).detach()
            diff = self.diff(p_u, q_u)
            m = self.mask(critic_other, q_u)
            masked = self.masked(p_u, q_u, m)
            share = m.mean()
        else:
            diff = masked = share = zero
        p_all = self.probs(z_all)
        d_fake = torch.sigmoid(critic_self(p_all).float())
        gen = gen_loss(d_fake)
        d_real = torch.sigmoid(critic_self(real).float())
        if self.hp.released_critic_detach:
            critic = disc_loss(d_fake, d_real).detach()
        else:  # the same value, with the segmenter's prediction detached: a gradient for the critic only
            critic = disc_loss(torch.sigmoid(critic_self(p_all.detach()).float()), d_real)
        unsup = diff + masked + self.hp.mu * gen
        return {"sup": sup, "diff": diff, "masked": masked, "gen": gen, "unsup": unsup, "total": sup + w * unsup,
                "critic": critic, "mask": share}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the two views' mean probability (B, C, D, H, W) (test_patch_ensemble.py:62-66):
        softmax of it gives the mean back; in the sigmoid form channels are (1 - p, p)."""
        p = (self.probs(self.networks["seg1"](x)) + self.probs(self.networks["seg2"](x))) / 2
        if self.hp.output == "sigmoid":
            p = torch.cat([1 - p, p], 1)
        return torch.log(p.clamp_min(1e-12))

    @staticmethod
    def search_space(trial) -> dict:
        """lr, the generator weight ``mu`` and the critic threshold ``t_m``."""
        return {**Method.search_space(trial), "mu": trial.suggest_float("mu", 1e-3, 0.1, log=True),
                "t_m": trial.suggest_float("t_m", 0.05, 0.8)}


def _fp32(like: torch.Tensor):
    """Autocast off for the losses (``binary_cross_entropy`` refuses autocast on CUDA); the
    critics then run in fp32 too (1x1x1 convolutions: cheap)."""
    return torch.autocast(like.device.type, enabled=False)


def gen_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``BCE(d_fake, 1)``: the generator term of critic confidences (B, 1, D, H, W) (utils/losses.py:132-136)."""
    return F.binary_cross_entropy(d_fake, torch.ones_like(d_fake))


def disc_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """The critic loss ``0.5 (BCE(d_real, 1) + BCE(d_fake, 0))`` of critic confidences (utils/losses.py:123-129)."""
    return 0.5 * (F.binary_cross_entropy(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake)))
