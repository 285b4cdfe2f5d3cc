"""The MagicNet family: MagicNet (Chen et al., CVPR 2023) and GA (Qi et al., ECCV 2024), one
implementation switched by hyperparameters (``ga`` = ``magicnet`` with GA loss, GADice + GACE,
instead of Dice + CE). Variants override hooks, as nnU-Net's trainer variants do:
:meth:`MagicNet.build_network` (the network and its head), :meth:`MagicNet.pl_condition` (the
head condition of the cube-wise pseudo-labels) and :meth:`MagicNet.extra_losses` (more terms on
the step's :class:`Views` and :class:`Targets`); ``methods/tak.py`` is such a variant of ``ga``.

One training step follows TAK-Semi's ``train_AMOS_MagicNet_GA_TAK.py`` (2 labeled + 2 unlabeled
images of ``patch`` size, cut into a grid of ``cube``^3 cubes: 3x3x3 of 32 at 96^3):

1. student on the batch -> ``outputs``;
2. cross-image partition: cubes swapped between images by a random permutation per cube
   position, student encoder + decoder on the mixed batch, features and decoder map
   recovered -> head -> ``outputs_unmix``;
3. teacher (EMA 0.99) on the unlabeled images + noise clamp(0.1 N, ±0.2) -> pseudo-label
   (argmax) and entropy map;
4. supervised = [CE(outputs) + Dice(outputs) + Dice(outputs_unmix) + Dice(local)] / 4 on the
   labeled images, with GA's GACE/GADice (``loss="ga"``) or plain CE/Dice (``"dice_ce"``);
5. magic-cube location: every image's cubes go through the encoder separately; an FC head
   predicts each cube's position from its bottleneck (NLL over the grid positions);
   "local": the labeled images' cube features decoded and re-assembled -> head -> Dice;
6. cube-wise pseudo-label blending (after ``dist_warmup`` steps): the teacher's decoder + head
   on the student's cube features of the unlabeled images, re-assembled; blended with the
   teacher's whole prediction by per-voxel weights from the running organ-class
   distribution of pseudo-labels (``OrganClassLogger``, updated every ``dist_update_every``
   steps, sharpened by ``T_dist``); argmax -> the consistency target;
7. consistency = Dice(outputs_unmix[unlabeled], target), weight
   ``consistency * sigmoid_rampup(t, consistency_rampup * T)``;
8. total = supervised + loc_weight * loc + weight * consistency (+ a variant's extra terms).

Choices where the released code is unclear or cannot be followed as is (all documented):

* ``T_dist`` is read but never defined in TAK-Semi (a crash at iteration 101); it is defined
  here with GALoss' default 1.0.
* Epoch-based schedules become fractions of the run: TAK trains 161 epochs with
  ``sigmoid_rampup(epoch, 160)`` for the consistency weight, so ``consistency_rampup=1.0``.
* The cube size adapts to CPU patches: ``cube=0`` picks the largest of min(patch)/3,
  /2, /1 that is a multiple of 16, at least 32 and divides the patch (32 for 96^3 as
  released: 3x3x3; 32 for the quick preset's 32x64x64: a 1x2x2 grid).
* The location FC is ``Linear(16n (cube/16)^3 -> 256 n) -> BN -> LeakyReLU -> Linear(-> N)``;
  at n = 16 and cube 32 that is MagicNet's 2048 -> 4096 -> 27.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UserError
from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.cube_mixing import (
    OrganClassLogger,
    cross_image_indices,
    cubes_of,
    grid,
    location_labels,
    mix,
    unmix,
    unmix_cubes,
)
from methods.ema import ema_update, make_teacher, teacher_noise
from methods.ga_loss import ga_ce, ga_dice
from methods.networks import VNet, kaiming_all
from methods.ramps import sigmoid_rampup


def pick_cube(patch: tuple[int, int, int], cube: int = 0) -> int:
    """Cube edge: a multiple of 16, at least 32 (the V-Net bottleneck of a cube must keep
    more than one voxel for InstanceNorm), dividing the patch; 3 cubes per axis if possible."""
    if cube:
        if cube < 32 or cube % 16:
            raise UserError(f"cube {cube} must be a multiple of 16 and at least 32; use --set cube=32 (or 0 to choose)")
        grid(patch, cube)
        return cube
    for n in (3, 2, 1):
        c = min(patch) // n
        if c >= 32 and c % 16 == 0 and all(p % c == 0 for p in patch):
            return c
    raise UserError(f"patch {'x'.join(map(str, patch))} cannot be cut into MagicNet cubes of at least 32 (a multiple of 16); "
                    f"use --set patch=32,64,64 (the quick preset) or 96,96,96")


class StaticHead(nn.Module):
    """The plain 1x1x1 output convolution (MagicNet / GA): logits (B, C, D, H, W) from the decoder
    output (B, n, D, H, W); it takes no condition."""

    def __init__(self, num_classes: int, dec_channels: int):
        super().__init__()
        self.out_conv = nn.Conv3d(dec_channels, num_classes, 1)

    def condition(self) -> None:
        """A static head has no per-class condition."""
        return None

    def forward(self, feats: Sequence[torch.Tensor], dec: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_conv(dec)


class MagicNetwork(nn.Module):
    """V-Net backbone (InstanceNorm, no output conv) + segmentation head + cube-location FC head.

    Args:
        num_classes: C, background included.
        width: base filters n of the V-Net (encoder maps x1..x5 have n, 2n, 4n, 8n, 16n channels).
        cube: cube edge of the magic-cube partition; n_cubes: cubes per patch.
        head: builds the segmentation head, called after the backbone is built (so the default
            initialisation draws in the same order for every head): the head maps
            ``head(feats[2:], dec, cond)`` -> logits (B, C, D, H, W) and gives ``head.condition()``
            (a per-class condition computed once per step, or None); default :class:`StaticHead`.
        init: backbone initialisation (``default``: PyTorch's, as released).

    ``forward(x)``: (B, 1, D, H, W) -> logits (B, C, D, H, W).
    """

    def __init__(self, num_classes: int, width: int, cube: int, n_cubes: int, head: Callable[[], nn.Module] | None = None,
                 init: str = "default"):
        super().__init__()
        self.backbone = VNet(1, None, width, "instancenorm", dropout=False, init=init)
        self.head: nn.Module = head() if head is not None else StaticHead(num_classes, width)
        bottleneck = 16 * width * max(cube // 16, 1) ** 3
        hidden = 256 * width
        self.fc = nn.Sequential(
            nn.Linear(bottleneck, hidden, bias=False), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, n_cubes)
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five encoder maps of ``x`` (B, 1, D, H, W)."""
        return self.backbone.encode(x)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder output (B, n, D, H, W) of the encoder maps."""
        return self.backbone.decode(feats)

    def head_condition(self) -> torch.Tensor | None:
        """The head's per-class condition for this step (None for a static head)."""
        return self.head.condition()

    def segment(self, feats: list[torch.Tensor], dec: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, C, D, H, W) from encoder maps, decoder output and the head condition."""
        return self.head(feats[2:], dec, cond)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        return self.segment(feats, self.decode(feats), self.head_condition())


@dataclass
class Views:
    """The student's encoder maps of one step's batch (B images, the labeled ones first), each a
    list of the five scales (B, ch_s, D_s, H_s, W_s), in the step's three views."""

    #: the images as they are
    whole: list
    #: the cross-image mixed images (mixed: ``unmix(f, ind)`` recovers each image's own layout)
    mixed: list
    #: the cross-image mixing permutation
    ind: torch.Tensor
    #: per image, the maps of its cubes (N, ch_s, ...), N = cubes per patch
    cubes: list


@dataclass
class Targets:
    """What one step's voxels are compared with (n_l labeled, B - n_l unlabeled images)."""

    #: ground truth of the labeled images (n_l, D, H, W)
    labels: torch.Tensor
    #: the teacher's argmax and the blended cube-wise target on the unlabeled images (B - n_l, D, H, W)
    pseudo: torch.Tensor
    blended: torch.Tensor
    #: entropies of the teacher's and of the blended prediction (B - n_l, 1, D, H, W)
    entropy: torch.Tensor
    blended_entropy: torch.Tensor


@register_method("magicnet")
class MagicNet(Method):
    """MagicNet: mean teacher with magic-cube partition/recovery, cube location loss and blending."""

    family = "MagicNet"
    paper = "Chen et al., MagicNet, CVPR 2023"
    code = "DeepMed-Lab-ECNU/MagicNet"

    #: the released optimiser: SGD with plain momentum (MagicNet, GALoss and TAK: no Nesterov)
    train_defaults = {"nesterov": False}

    @dataclass
    class Hparams(Method.Hparams):
        cube: int = setting(0, ge=0)
        ema_decay: float = setting(0.99, ge=0.0, le=1.0)
        consistency: float = setting(0.1, ge=0.0)
        consistency_rampup: float = setting(1.0, ge=0.0)
        loc_weight: float = setting(0.1, ge=0.0)
        dist_warmup: int = setting(100, ge=0)
        dist_update_every: int = setting(20, ge=1)
        T_dist: float = setting(1.0, gt=0.0)
        loss: Literal["ga", "dice_ce"] = "dice_ce"
        #: initialisation: the released MagicNet / GALoss / TAK call no initialiser (PyTorch's
        #: default); "kaiming" / "xavier" re-initialise the backbone's Conv3d weights as DHC's
        #: initialisers do; "kaiming_all" does what TAK's defined-but-unused
        #: kaiming_normal_init_weight would do to the whole network (every Conv3d, zero biases)
        init: Literal["kaiming", "xavier", "default", "kaiming_all"] = "default"
        #: who decodes the unlabeled cubes into the cube-wise pseudo-label: the released MagicNet
        #: and GALoss call get_mix_pl(model, ...) (the student); TAK passes its EMA teacher
        pl_source: Literal["student", "teacher"] = "student"
        #: the released recovery of a cube list transposes the cube grid (methods/cube_mixing.py,
        #: released_order); ours inverts the partition
        released_cube_order: bool = False
        #: consistency ramp sigmoid_rampup(step // epoch, consistency_rampup_epochs), epoch = n
        #: iterations (MagicNet and GALoss: 0.1 sigmoid_rampup(iter // 350, 200)),
        #: "unlabeled_batches" (one pass over the unlabeled batches: DHC's epoch) or
        #: "unlabeled_cases" (|U| iterations: TAK's epoch); "run" = sigmoid_rampup(step,
        #: consistency_rampup x the run) (the suite's earlier ramp, not released)
        consistency_epoch: int | Literal["run", "unlabeled_batches", "unlabeled_cases"] = setting(350, ge=1)
        consistency_rampup_epochs: float = setting(200.0, gt=0.0)
        #: the teacher's BatchNorm statistics (the location head's BatchNorm1d): its own, as the
        #: releases' update_ema_variables (parameters only), or "copy" of the student's (earlier)
        ema_buffers: Literal["own", "copy"] = "own"
        #: "independent": the teacher is a second random init (MagicNet train_main_btcv.py:125,
        #: TAK train:160 call create_model(ema=True)); "copy": a copy of the student (earlier)
        teacher_init: Literal["independent", "copy"] = "independent"

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        self.cube = pick_cube(tuple(ctx.patch_size), self.hp.cube)
        self.n = grid(tuple(ctx.patch_size), self.cube)
        net = self.build_network()
        self.networks["net"] = net
        self.teachers["teacher"] = make_teacher(self.build_network() if self.hp.teacher_init == "independent" else net)
        #: running class distribution of the pseudo-labels (blending weights)
        self.class_dist = OrganClassLogger(ctx.num_classes)

    @property
    def n_cubes(self) -> int:
        """Cubes per patch (the location head's classes)."""
        return self.n[0] * self.n[1] * self.n[2]

    def build_network(self) -> MagicNetwork:
        """The student network (the teacher is its copy); variants replace the head or add parts."""
        return self.initialised(MagicNetwork(self.ctx.num_classes, self.ctx.width, self.cube, self.n_cubes, init=self.backbone_init))

    @property
    def backbone_init(self) -> str:
        """The init the backbone is built with (``kaiming_all`` is applied to the whole network
        once built, by :meth:`initialised`)."""
        return "default" if self.hp.init == "kaiming_all" else self.hp.init

    def initialised(self, net: MagicNetwork) -> MagicNetwork:
        """``net`` after the whole-network init ``kaiming_all`` where chosen."""
        if self.hp.init == "kaiming_all":
            kaiming_all(net)
        return net

    @classmethod
    def check_settings(cls, hp: "MagicNet.Hparams", train) -> None:
        """Before any data: the patch must cut into cubes (one line naming the fix)."""
        pick_cube(tuple(train.patch), hp.cube)

    # -- losses -----------------------------------------------------------------------------
    def dice(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ga_dice(probs, target, gradient_aware=self.hp.loss == "ga")

    def ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hp.loss == "ga":
            return ga_ce(logits, target)
        return F.cross_entropy(logits.float(), target.long())

    def consistency_weight(self, step: int) -> float:
        if self.hp.consistency_epoch == "run":
            return self.hp.consistency * sigmoid_rampup(step, self.hp.consistency_rampup * self.ctx.iterations)
        return self.hp.consistency * sigmoid_rampup(step // self.epoch_length(self.hp.consistency_epoch), self.hp.consistency_rampup_epochs)

    def epoch_length(self, epoch: int | str) -> int:
        """Iterations of one epoch: ``epoch`` itself, or "unlabeled_batches" (one pass over the
        unlabeled batches: DHC's epoch) or "unlabeled_cases" (|U| iterations: TAK's epoch)."""
        return {"unlabeled_batches": self.ctx.epoch_length, "unlabeled_cases": max(1, self.ctx.n_unlabeled)}.get(epoch, epoch)  # type: ignore[return-value]

    def unmix_cubes(self, cubes: torch.Tensor) -> torch.Tensor:
        """Recovery of a cube list (B, N, C, s, s, s) -> (B, C, D', H', W') (released order on request)."""
        return unmix_cubes(cubes, self.n, self.hp.released_cube_order)

    def pl_cube_indices(self, n_l: int, b: int) -> range:
        """Batch indices whose cubes give the unlabeled images' cube-wise pseudo-labels."""
        return range(n_l, b)

    def pl_condition(self, net: MagicNetwork, teacher: MagicNetwork, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The head condition the cube-wise pseudo-labels are decoded with (``cond``: the
        student's of this step): that of the network ``pl_source`` names."""
        return (teacher if self.hp.pl_source == "teacher" else net).head_condition()

    # -- the step ---------------------------------------------------------------------------
    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        """MagicNet's step: supervised losses on the full, cross-image-mixed and cube-recovered
        predictions, the cube location loss, a consistency Dice of the mixed unlabeled
        prediction against the blended pseudo-labels, and the variant's :meth:`extra_losses`."""
        if unlabeled is None:
            raise ValueError(f"{self.registry_name} needs unlabeled batches (unlabeled_bs > 0 and unlabeled cases)")
        net: MagicNetwork = self.networks["net"]  # type: ignore[assignment]
        teacher: MagicNetwork = self.teachers["teacher"]  # type: ignore[assignment]
        y = labeled["label"]
        n_l = y.shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]])
        b = x.shape[0]
        cond = net.head_condition()

        feats = net.encode(x)
        outputs = net.segment(feats, net.decode(feats), cond)

        # cross-image partition and recovery
        ind = cross_image_indices(b, self.n, device=x.device)
        mfeats = net.encode(mix(x, ind))
        mdec = net.decode(mfeats)
        mfeats_rec = [unmix(f, ind) for f in mfeats]
        outputs_unmix = net.segment(mfeats_rec, unmix(mdec, ind), cond)

        t_logits, pseudo, entropy = self.teacher_targets(teacher, unlabeled["image"])
        soft, soft_unmix = torch.softmax(outputs.float(), 1), torch.softmax(outputs_unmix.float(), 1)
        sup_ce = self.ce(outputs[:n_l], y)
        sup_dice = self.dice(soft[:n_l], y)
        sup_unmix = self.dice(soft_unmix[:n_l], y)
        cube_feats, loc_loss, sup_local = self.cube_losses(net, x, y, cond)
        sup = (sup_ce + sup_dice + sup_unmix + sup_local) / 4
        target, mix_entropy = self.blend_pseudo_labels(step, net, teacher, cond, cube_feats, t_logits, pseudo, entropy)

        cons = self.dice(soft_unmix[n_l:], target)
        w_cons = self.consistency_weight(step)
        total = sup + self.hp.loc_weight * loc_loss + w_cons * cons
        parts = {"sup": sup, "loc": loc_loss, "unsup": cons, "w_unsup": torch.tensor(w_cons)}
        extra = self.extra_losses(step, net, Views(feats, mfeats, ind, cube_feats), Targets(y, pseudo, target, entropy, mix_entropy))
        for name, (weight, value) in extra.items():
            total = total + weight * value
            parts[name] = value
        return Losses(total, parts)

    def teacher_targets(self, teacher: MagicNetwork, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The EMA teacher on the noised unlabeled images (B_u, 1, D, H, W): its logits
        (B_u, C, D, H, W), hard pseudo-labels (B_u, D, H, W) and voxel entropy (B_u, 1, D, H, W)."""
        with torch.no_grad():
            t_logits = teacher(teacher_noise(image)).float()
            t_soft = torch.softmax(t_logits, 1)
            entropy = -(t_soft * torch.log(t_soft + 1e-6)).sum(1, keepdim=True)
        return t_logits, t_soft.argmax(1), entropy

    def cube_losses(self, net: MagicNetwork, x: torch.Tensor, y: torch.Tensor, cond) -> tuple[list, torch.Tensor, torch.Tensor]:
        """Magic-cube location and within-image partition of the batch ``x`` (B, 1, D, H, W)
        whose first ``len(y)`` images are labeled: every image's cube features, the location
        loss (mean over images) and the Dice of the labeled images' recovered cube prediction."""
        n_l, b = y.shape[0], x.shape[0]
        cubes = cubes_of(x, self.cube)  # (B, N, 1, c, c, c)
        loc_target = location_labels(self.n, device=x.device)
        cube_feats, loc_loss = [], x.new_zeros(())
        for i in range(b):
            f = net.encode(cubes[i])
            cube_feats.append(f)
            loc_loss = loc_loss + F.nll_loss(F.log_softmax(net.fc(f[4].flatten(1)).float(), 1), loc_target)
        loc_loss = loc_loss / b
        dec_local = torch.stack([net.decode(cube_feats[i]) for i in range(n_l)])
        feat_local = [self.unmix_cubes(torch.stack([cube_feats[i][s] for i in range(n_l)])) for s in range(5)]
        pred_local = net.segment(feat_local, self.unmix_cubes(dec_local), cond)
        return cube_feats, loc_loss, self.dice(torch.softmax(pred_local.float(), 1), y)

    def blend_pseudo_labels(self, step: int, net: MagicNetwork, teacher: MagicNetwork, cond, cube_feats: list,
                            t_logits: torch.Tensor, pseudo: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cube-wise pseudo-label blending (after ``dist_warmup`` steps): the teacher's logits
        blended, per voxel, with the cube-wise decoding by its class weight; returns the
        consistency target (B_u, D, H, W) and its entropy. Updates the class distribution."""
        target, mix_entropy = pseudo, entropy
        n_l = len(cube_feats) - pseudo.shape[0]
        with torch.no_grad():
            if step > self.hp.dist_warmup:
                w = self.class_dist.weights(self.hp.T_dist).to(t_logits.device)[pseudo][:, None]  # (B_u, 1, D, H, W)
                pl_net = teacher if self.hp.pl_source == "teacher" else net
                pl_cond = self.pl_condition(net, teacher, cond)
                pl = []
                for i in self.pl_cube_indices(n_l, len(cube_feats)):
                    f = [t.detach() for t in cube_feats[i]]
                    pl.append(pl_net.segment(f, pl_net.decode(f), pl_cond).float())
                unmix_pl = self.unmix_cubes(torch.stack(pl))
                blended = torch.softmax((1 - w) * t_logits + w * unmix_pl, 1)
                mix_entropy = -(blended * torch.log(blended + 1e-6)).sum(1, keepdim=True)
                target = blended.argmax(1)
            self.class_dist.append(target)
        if step % self.hp.dist_update_every == 0:
            self.class_dist.update()
        return target, mix_entropy

    def extra_losses(self, step: int, net: MagicNetwork, views: Views, targets: Targets) -> dict:
        """More loss terms of a variant on this step's maps and targets: ``{name: (weight, loss)}``
        (each is added to the total as weight x loss and logged under its name)."""
        return {}

    def after_step(self, step: int) -> None:
        ema_update(self.teachers["teacher"], self.networks["net"], self.hp.ema_decay, step, self.hp.ema_buffers)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks["net"](x)

    def running_state(self) -> dict:
        return {"class_dist": self.class_dist.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.class_dist.load_state_dict(state["class_dist"] if "class_dist" in state else state["logger"])  # "logger": older checkpoints

    @staticmethod
    def search_space(trial) -> dict:
        return {
            **Method.search_space(trial),
            "ema_decay": trial.suggest_float("ema_decay", 0.9, 0.999),
            "consistency": trial.suggest_float("consistency", 0.01, 1.0, log=True),
            "loc_weight": trial.suggest_float("loc_weight", 0.01, 1.0, log=True),
        }


@register_method("ga")
class GA(MagicNet):
    """GA: MagicNet trained with GA loss (GADice + GACE), as in GALoss' AMOS/Synapse scripts."""

    paper = "Qi et al., GA loss, ECCV 2024"
    code = "cicailalala/GALoss"

    @dataclass
    class Hparams(MagicNet.Hparams):
        loss: Literal["ga", "dice_ce"] = "ga"
        #: GALoss' get_mix_pl decodes the first unlabeled_bs images' cubes - the labeled ones - for
        #: the unlabeled images' pseudo-labels (a released bug; ours takes the unlabeled cubes)
        released_galoss_mix_pl: bool = False

    def pl_cube_indices(self, n_l: int, b: int) -> range:
        return range(0, b - n_l) if self.hp.released_galoss_mix_pl else range(n_l, b)
