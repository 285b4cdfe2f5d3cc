"""TAK: Textual Anatomical Knowledge for class-imbalanced semi-supervised organ segmentation
(Gu et al., 2025; code Lunn88/TAK-Semi), as the released code does it.

TAK = GA (MagicNet + GA loss, ``methods/magicnet.py``) + two text parts:

* the segmentation head's parameters come from text priors (``methods/text_head.py``): the
  embeddings of an LLM's descriptions of each organ's location and shape (``--prompts
  anatomy``) by a text encoder (``--text-encoder minilm``; ``file:...`` loads TAK's released
  AMOS tensor as is), at the encoder's own scale as the release loads its tensor
  (``--set prior_norm=4.785`` rescales any prior to the released tensor's mean row norm:
  docs/fidelity.md);
* a voxel-text supervised contrastive loss (``methods/contrastive.py``) at 1/4, 1/8 and 1/16
  scale, weight 0.1, switched on once the epoch (|U| iterations) exceeds ``contrast_start_epoch``
  = 20, i.e. from epoch 21 (TAK train:206).
  Voxel labels: ground truth for the labeled-derived maps (the labeled images, their
  cross-image recovered and within-image cube maps), the teacher's argmax for the
  unlabeled images and their recovered maps, the blended pseudo-label for their cube maps;
  unlabeled voxels whose (teacher / blended) entropy exceeds
  ``ln 2 (0.75 + 0.25 sigmoid_rampup(epoch, entropy_rampup_epochs = 100))`` are ignored (TAK
  train:288, per epoch). ``schedule_unit="run"`` gives the suite's earlier schedules instead:
  contrast after ``contrast_start`` (0.125) of the run, the threshold ramped per step over
  ``entropy_rampup`` (0.625) of it. Up to 4/2/1 x ``sample_num`` (10)
  voxels per class and image at each scale; τ = 0.07.

Where paper and code differ, the code is followed: softmax over classes with CE + Dice (the
paper's Universal-Model head uses sigmoids); the text tensor is frozen (not trained); the
contrastive projection of the 16n-channel scale reuses the head's shared text projection
when 16n equals its 256 width (as released: ``text_to_256``).

Slow start, as released: the controller keeps PyTorch's default initialisation (the released
script defines ``kaiming_normal_init_weight`` but never calls it) and the head's logits start
almost flat across voxels; when training leaves that start depends on the seed, and in
CPU-sized runs it can take most of the run (measurements: docs/performance.md, issue #20
section). Runs shorter than ``slow_start_steps`` are told so before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import PriorSpec
from methods.contrastive import voxel_text_contrastive
from methods.cube_mixing import unmix
from methods.magicnet import GA, MagicNet, MagicNetwork, Targets, Views
from methods.ramps import sigmoid_rampup
from methods.text_head import TextDrivenHead

#: mean L2 norm of the rows of TAK's released text prior (CLIP/amos_embedding_shape_location.pth,
#: 32 x 512; tests/test_tak.py recomputes it from ../shared/reference)
RELEASED_PRIOR_NORM = 4.785


def scale_prior(prior: torch.Tensor, norm: float | str) -> torch.Tensor:
    """``prior`` (N, d) times one factor that makes its mean row norm ``norm`` ("encoder": unchanged)."""
    if norm == "encoder":
        return prior
    return prior * (norm / prior.norm(dim=1).mean())


class TAKNetwork(MagicNetwork):
    """MagicNetwork whose head is generated from text priors (:class:`TextDrivenHead`), plus
    TAK's contrastive projections when ``contrast``: voxels, per scale x3 / x4 / x5, a 1x1 conv,
    InstanceNorm, ReLU, 1x1 conv; text, per scale, Linear + ReLU from the prior's dimension,
    or the head's shared text projection where the scale's width equals it (as released:
    ``text_to_256``).

    Args:
        prior: (V * C, d) text-prior embeddings; the rest as :class:`MagicNetwork`.
    """

    def __init__(self, num_classes: int, width: int, cube: int, n_cubes: int, prior: torch.Tensor, contrast: bool,
                 init: str = "default"):
        feat_ch = (4 * width, 8 * width, 16 * width)
        super().__init__(num_classes, width, cube, n_cubes, lambda: TextDrivenHead(prior, num_classes, feat_ch, width), init)
        self.contrast = contrast
        if contrast:
            self.voxel_proj = nn.ModuleList(
                [nn.Sequential(nn.Conv3d(c, c, 1), nn.InstanceNorm3d(c), nn.ReLU(inplace=True), nn.Conv3d(c, c, 1)) for c in feat_ch]
            )
            hid = self.head.text_to_hidden[0].out_features  # type: ignore[union-attr,index]
            self.text_proj = nn.ModuleList(
                [nn.Identity() if c == hid else nn.Sequential(nn.Linear(prior.shape[1], c), nn.ReLU(inplace=True)) for c in feat_ch]
            )

    def text_embeddings(self) -> list[torch.Tensor]:
        """Per scale (x3, x4, x5): projections of every view embedding, (V * C, ch)."""
        head: TextDrivenHead = self.head  # type: ignore[assignment]
        shared = head.text_hidden()
        return [shared if isinstance(p, nn.Identity) else p(head.prior) for p in self.text_proj]


@register_method("tak")
class TAK(GA):
    """TAK: GA + text-prior-driven segmentation head + voxel-text contrastive loss."""

    paper = "Gu et al., TAK (text priors), 2025"
    code = "Lunn88/TAK-Semi"

    text_priors = PriorSpec()
    #: the released optimiser: SGD(momentum 0.9, weight_decay 1e-4, nesterov=True) (TAK-Semi
    #: train_AMOS_MagicNet_GA_TAK.py:161; MagicNet and GALoss use plain momentum)
    train_defaults = {"nesterov": True}
    #: whether the voxel-text contrastive loss exists in this variant (with ``contrast_weight`` > 0)
    contrastive: bool = True
    slow_start_steps = 600
    slow_start = ("as released, its text-driven head starts almost flat and leaves that start after a "
                  "seed-dependent number of steps (docs/performance.md)")

    @dataclass
    class Hparams(GA.Hparams):
        text_head: bool = True
        contrast_weight: float = setting(0.1, ge=0.0)
        #: the contrastive loss is on once the epoch (|U| iterations) exceeds this (TAK train:206)
        contrast_start_epoch: int = setting(20, ge=0)
        #: the entropy threshold ramps per epoch over this many epochs (TAK train:288)
        entropy_rampup_epochs: float = setting(100.0, gt=0.0)
        #: "epoch": the two schedules above, in TAK's epochs, as released; "run": the suite's
        #: earlier ones - contrast after contrast_start of the run, the threshold ramped per step
        #: over entropy_rampup of it
        schedule_unit: Literal["epoch", "run"] = "epoch"
        contrast_start: float = setting(0.125, ge=0.0, le=1.0)
        entropy_rampup: float = setting(0.625, ge=0.0)
        sample_num: int = setting(10, ge=1)
        temperature: float = setting(0.07, gt=0.0)
        #: TAK's get_mix_pl(ema_model, unlabeled cube features, clip_embedding): the teacher decodes...
        pl_source: Literal["student", "teacher"] = "teacher"
        #: ... with the student's class embedding (``teacher``: the teacher's own)
        pl_class_embedding: Literal["student", "teacher"] = "student"
        #: TAK: 0.1 sigmoid_rampup(epoch, 160) with an epoch of |U| iterations (TAK-Semi
        #: train_AMOS_MagicNet_GA_TAK.py:56-57, 386; its consistency_rampup flag is unused)
        consistency_epoch: int | Literal["run", "unlabeled_batches", "unlabeled_cases"] = setting("unlabeled_cases", ge=1)
        consistency_rampup_epochs: float = setting(160.0, gt=0.0)
        #: TAK takes GALoss' get_mix_pl fixed (the unlabeled cubes); no such switch here
        released_galoss_mix_pl: bool = False
        #: mean row norm the prior is scaled to before it enters the network (one factor for the
        #: whole tensor): "encoder" = the encoder's own scale, as the release loads its tensor;
        #: 4.785 = the scale of TAK's released tensor (rows 3.7-5.6), for other encoders (minilm
        #: gives unit rows)
        prior_norm: float | Literal["encoder"] = setting("encoder", gt=0.0)

    @property
    def use_contrast(self) -> bool:
        """Whether this run adds the contrastive term (it needs the text head)."""
        return self.contrastive and self.hp.text_head and self.hp.contrast_weight > 0

    def build_network(self) -> MagicNetwork:
        """GA's network with the text-driven head and, if used, the contrastive projections;
        with ``text_head=False`` exactly GA's network."""
        if not self.hp.text_head:
            return super().build_network()
        if self.ctx.priors is None:
            raise ValueError("tak needs text priors: the runner passes them (--prompts, --text-encoder)")
        prior = scale_prior(self.ctx.priors(), self.hp.prior_norm)
        return self.initialised(
            TAKNetwork(self.ctx.num_classes, self.ctx.width, self.cube, self.n_cubes, prior, self.use_contrast, self.backbone_init)
        )

    def pl_condition(self, net, teacher, cond):
        """TAK decodes the pseudo-label cubes with the student's class embedding (detached),
        or the teacher's own with ``pl_class_embedding=teacher``."""
        if cond is None:
            return None
        return cond.detach() if self.hp.pl_class_embedding == "student" else teacher.head_condition()

    def tak_epoch(self, step: int) -> int:
        """TAK's epoch of ``step``: one pass of |U| iterations (train:56-57)."""
        return step // self.epoch_length("unlabeled_cases")

    def entropy_threshold(self, step: int) -> float:
        if self.hp.schedule_unit == "run":
            return math.log(2) * (0.75 + 0.25 * sigmoid_rampup(step, self.hp.entropy_rampup * self.ctx.iterations))
        return math.log(2) * (0.75 + 0.25 * sigmoid_rampup(self.tak_epoch(step), self.hp.entropy_rampup_epochs))

    def contrast_on(self, step: int) -> bool:
        """Whether step ``step`` adds the contrastive term (the variant has it and it has started)."""
        if not self.use_contrast:
            return False
        if self.hp.schedule_unit == "run":
            return step >= self.hp.contrast_start * self.ctx.iterations
        return self.tak_epoch(step) > self.hp.contrast_start_epoch

    def extra_losses(self, step: int, net: TAKNetwork, views: Views, targets: Targets) -> dict:  # type: ignore[override]
        """The voxel-text contrastive term (once :meth:`contrast_on`)."""
        if not self.contrast_on(step):
            return {}
        n_l = targets.labels.shape[0]
        vox = []
        for s, proj in enumerate(net.voxel_proj):
            full = proj(views.whole[2 + s])
            rec = unmix(proj(views.mixed[2 + s]), views.ind)
            cube = self.unmix_cubes(torch.stack([proj(f[2 + s]) for f in views.cubes]))
            # labeled-derived maps first, then unlabeled-derived (TAK's organized_idx)
            vox.append(torch.cat([full[:n_l], rec[:n_l], cube[:n_l], full[n_l:], rec[n_l:], cube[n_l:]]))
        thr = self.entropy_threshold(step)
        unl_labels = torch.cat([targets.pseudo, targets.pseudo, targets.blended])[:, None].clone()
        unl_entropy = torch.cat([targets.entropy, targets.entropy, targets.blended_entropy])
        unl_labels[unl_entropy > thr] = -1
        labels = torch.cat([targets.labels[:, None].repeat(3, 1, 1, 1, 1), unl_labels]).long()
        text = net.text_embeddings()
        c = self.ctx.num_classes
        text_labels = torch.arange(c, device=targets.labels.device).repeat(text[0].shape[0] // c)
        n_views = [4 * self.hp.sample_num, 2 * self.hp.sample_num, self.hp.sample_num]
        loss = voxel_text_contrastive(vox, labels, text, text_labels, n_views, self.hp.temperature)
        return {"contrast": (self.hp.contrast_weight, loss)}

    @staticmethod
    def search_space(trial) -> dict:
        return {
            **MagicNet.search_space(trial),
            "contrast_weight": trial.suggest_float("contrast_weight", 0.01, 1.0, log=True),
            "temperature": trial.suggest_float("temperature", 0.03, 0.3, log=True),
        }


@register_method("tak_no_contrast")
class TAKNoContrast(TAK):
    """Ablation: TAK without the voxel-text contrastive loss (text-driven head only)."""

    paper = "TAK ablation: no voxel-text contrastive loss"

    contrastive = False


@register_method("tak_names")
class TAKNames(TAK):
    """Ablation: TAK with single-template prompts ('A computerized tomography of a {organ}')."""

    paper = "TAK ablation: organ names in one template as prompts"

    text_priors = PriorSpec(prompts="names")


@register_method("tak_no_text")
class TAKNoText(TAK):
    """Ablation: TAK whose head and text anchors use uninformative vectors (hash encoder, no semantics)."""

    paper = "TAK ablation: hash vectors instead of text (no semantics)"

    text_priors = PriorSpec(prompts="anatomy", encoder="hash:512")
