"""A&D, "Aggregating & Decoupling" (Wang & Li, NeurIPS 2023), as GenericSSL's
``code/train_diffusion.py`` (Synapse task, README ``-l 1e-2 -w 10``) with ``code/DiffVNet/diff_vnet.py``
and ``code/DiffVNet/guided_diffusion/``.

Network (:class:`ADNet`, the release's ``DiffVNet``): one V-Net encoder shared by three decoders.
Every conv stage is conv -> ReLU -> norm -> Dropout3d(``stage_dropout`` = 0.1) (this order, and
the 0.1 dropout in every stage, are the release's, not the suite's V-Net); down / up blocks are
stride-2 conv / transposed conv -> ReLU -> norm without dropout; ``dropout`` adds the release's
``has_dropout`` Dropout3d(0.5) on the bottleneck and on the last decoder map. Two stems (one
conv stage each): ``stem`` takes the image (D_psi and D_theta), ``stem_xi`` takes
``cat([image, x_t])`` (D_xi). The diffusion path adds a time embedding (sinusoidal, 128 ->
Linear 512 -> SiLU -> Linear 512) to the output of every down / up block and of every conv stage
but the last of each block, through a per-layer ``Linear(SiLU(temb))``; D_psi and D_theta run
the same encoder without it.

* D_xi (``dec_xi``, the diffusion decoder): x_0 = 2 onehot(y) - 1, t ~ U{0..T-1} (T = 1000),
  x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps with the linear schedule beta = linspace(1e-4, 0.02, T)
  (x 1000 / T); it predicts x_0 as logits: L_deno = DC_and_CE(D_xi(x_t, t, image), y).
* D_psi (``dec_psi``): L_diff = DC_and_CE(D_psi(image), y) with class weights from
  :class:`Difficulty` measured on D_xi's prediction of this batch.
* D_theta (``dec_theta``): before each step D_theta <- ema_w D_theta + (1 - ema_w)(D_xi + D_psi)/2
  (parameters matched by name; D_xi's time-embedding layers have no counterpart; BatchNorm
  running statistics stay D_theta's own); it is also trained:
  L_u = DC_and_CE(D_theta(image_u), pseudo-label).
* pseudo-label (no gradient, networks in train mode as released): DDIM (eta 0) from x_T ~ N(0, I)
  over the 10 evenly spaced timesteps {0, 111, ..., 999}, predicting x_0 clipped to [-1, 1];
  the last x_0 -> Gumbel-softmax (tau 1) -> 3x3x3 Gaussian smoothing (sigma 1, zero padding);
  pseudo-label = argmax(that + softmax(D_psi(image_u))).
* total = L_deno + L_diff + mu(t) L_u, mu(t) = ``mu`` sigmoid_rampup over the whole run; lr and
  mu change once per epoch, one epoch late, as DHC's loops (``schedule``). DC_and_CE is DHC's
  (``methods.losses.dhc_dc_ce_loss``: CE + (- mean foreground soft Dice)).
* inference: D_theta alone (test.py ``pred_type="D_theta_u"``): no sampling at test time.

Cost per step: 3 forward / backward passes (D_xi and D_psi on the labeled images, D_theta on
the unlabeled ones) plus ``sampling_steps`` + 1 forward passes without gradient (DDIM and D_psi
on the unlabeled images): about 2-3x a DHC step. The random draws (t, eps, x_T, Gumbel noise)
come from the global torch RNG, which the engine seeds from the run's seed; each goes through a
``draw_*`` method so tests can feed fixed values. Deviations (docs/fidelity.md): AMP follows the
engine; t is drawn by torch (the release: numpy); no validation-based checkpoint selection or
early stopping; StrongAug is the data pipeline's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.class_weighting import DiffDW, ema
from methods.losses import dhc_dc_ce_loss, one_hot
from methods.networks import _norm, init_weights
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams

TIME_DIM = 128  # sinusoidal embedding size (diff_vnet.py TimeStepEmbedding.embed_dim_in)
TIME_HIDDEN = 512  # time-MLP width (embed_dim_in * 4)


# ----------------------------------------------------------------------------- diffusion
def timestep_embedding(t: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """(B,) timesteps -> (B, dim): [sin(t f_k), cos(t f_k)], f_k = 10000^(-k / (dim/2 - 1)) (DDPM's)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
    arg = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def linear_betas(steps: int) -> np.ndarray:
    """DDPM's linear schedule scaled to ``steps``: linspace(1e-4, 0.02) x 1000 / steps (float64)."""
    scale = 1000.0 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


def space_timesteps(steps: int, count: int) -> list[int]:
    """``count`` timesteps of ``steps`` evenly spaced from 0 to steps - 1 (one section of
    improved-diffusion's ``space_timesteps``: stride (steps - 1) / (count - 1), rounded)."""
    if not 1 <= count <= steps:
        raise ValueError(f"cannot take {count} of {steps} timesteps")
    stride = 1.0 if count <= 1 else (steps - 1) / (count - 1)
    out, cur = [], 0.0
    for _ in range(count):
        out.append(round(cur))
        cur += stride
    return sorted(set(out))


class Diffusion:
    """q(x_t | x_0) of the training schedule and the DDIM (eta = 0) sampler over spaced timesteps.

    Tables are float64 (as improved-diffusion), cast to float32 where they meet tensors.
    """

    def __init__(self, steps: int = 1000, sampling_steps: int = 10):
        self.steps = steps
        self.betas = linear_betas(steps)
        if not ((self.betas > 0).all() and (self.betas <= 1).all()):
            raise ValueError(f"the linear schedule needs at least 20 steps, not {steps}")
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.sqrt_ab = np.sqrt(self.alphas_cumprod)
        self.sqrt_1m_ab = np.sqrt(1.0 - self.alphas_cumprod)
        # the sampler's process: betas recomputed over the kept timesteps (respace.py SpacedDiffusion)
        self.timestep_map = space_timesteps(steps, sampling_steps)
        last, betas = 1.0, []
        for i in self.timestep_map:
            betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        self.sample_ab = np.cumprod(1.0 - np.array(betas))
        self.sample_ab_prev = np.append(1.0, self.sample_ab[:-1])
        # the DDIM step's coefficients as improved-diffusion applies them: float64 tables cast to
        # float32, square roots of alpha-bar-prev taken in float32 (gaussian_diffusion.py
        # ddim_sample); the train-mode sampling chain amplifies differences in the last bit
        prev32 = torch.from_numpy(self.sample_ab_prev).float()
        self._ddim = list(zip(torch.from_numpy(np.sqrt(1.0 / self.sample_ab)).float().tolist(),
                              torch.from_numpy(np.sqrt(1.0 / self.sample_ab - 1.0)).float().tolist(),
                              torch.sqrt(prev32).tolist(), torch.sqrt(1 - prev32).tolist()))

    @staticmethod
    def _at(table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = torch.from_numpy(table)[t.cpu()].float().to(like.device)
        return v.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise, per image timestep ``t`` (B,)."""
        return self._at(self.sqrt_ab, t, x0) * x0 + self._at(self.sqrt_1m_ab, t, x0) * noise

    def ddim_x0(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor) -> torch.Tensor:
        """The x_0 prediction (clipped to [-1, 1]) of the last DDIM step from ``x_T``.

        ``model(x, t)`` predicts x_0 at the original timestep ``t`` (B,). Step i (from the last
        kept timestep down): x0 = clip(model(x, t_i)), eps = (x / sqrt(ab_i) - x0) / sqrt(1 / ab_i - 1),
        x <- sqrt(ab_{i-1}) x0 + sqrt(1 - ab_{i-1}) eps (ab over the kept timesteps, ab_{-1} = 1).
        """
        x, b = _at_least_fp32(x_T), x_T.shape[0]
        x0 = x
        for i in reversed(range(len(self.timestep_map))):
            t = torch.full((b,), self.timestep_map[i], dtype=torch.long, device=x.device)
            x0 = model(x, t).to(x.dtype).clamp(-1, 1)
            if i == 0:
                break  # the last step's x_{-1} is not used
            recip, recipm1, sqrt_prev, sqrt_1m_prev = self._ddim[i]
            eps = (recip * x - x0) / recipm1
            x = x0 * sqrt_prev + sqrt_1m_prev * eps
        return x0


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 unless it is float64 (half-precision outputs of autocast are promoted)."""
    return x if x.dtype == torch.float64 else x.float()


def gaussian_kernel(size: int = 3, sigma: float = 1.0, dim: int = 3) -> torch.Tensor:
    """Normalised ``size``^dim Gaussian (product of 1-D exp(-(k - (size-1)/2)^2 / (2 sigma^2)))."""
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k / sigma) ** 2 / 2)
    kernel = g
    for _ in range(dim - 1):
        kernel = kernel[..., None] * g
    return (kernel / kernel.sum()).float()


def smooth(p: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 3-D convolution with ``kernel`` (odd size), zero padding, same size."""
    c = p.shape[1]
    w = kernel.to(p)[None, None].expand(c, 1, *kernel.shape)
    return F.conv3d(p, w, groups=c, padding=kernel.shape[-1] // 2)


# ----------------------------------------------------------------------------- network
class Stage(nn.Module):
    """``conv`` -> ReLU -> norm -> Dropout3d(p), then + Linear(SiLU(temb)) per channel when the
    stage takes the time embedding (``temb=True``) and one is given."""

    def __init__(self, conv: nn.Module, cout: int, norm: str, p: float = 0.0, temb: bool = False):
        super().__init__()
        self.conv = conv
        self.norm = _norm(norm, cout)
        self.drop = nn.Dropout3d(p) if p > 0 else nn.Identity()
        self.temb = nn.Linear(TIME_HIDDEN, cout) if temb else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop(self.norm(F.relu(self.conv(x))))
        if self.temb is not None and temb is not None:
            x = x + self.temb(F.silu(temb))[:, :, None, None, None]
        return x


def conv_stages(n: int, cin: int, cout: int, norm: str, p: float, temb: bool) -> nn.ModuleList:
    """``n`` 3x3x3 stages; with ``temb`` all but the last take the time embedding (the release's
    ``ConvBlockTemb``)."""
    return nn.ModuleList([Stage(nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), cout, norm, p, temb and i < n - 1)
                          for i in range(n)])


def _run(stages: nn.ModuleList, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    for s in stages:
        x = s(x, temb)
    return x


class Encoder(nn.Module):
    """Stride-2 down blocks + conv stages (2, 3, 3, 3): maps x1 (the stem's, n channels) to
    [x1, x2, x3, x4, x5] at n, 2n, 4n, 8n, 16n channels; Dropout3d(0.5) on x5 with ``dropout``."""

    def __init__(self, n: int, norm: str, p: float, dropout: bool):
        super().__init__()
        chans = (n, 2 * n, 4 * n, 8 * n)
        self.down = nn.ModuleList([Stage(nn.Conv3d(c, 2 * c, 2, stride=2), 2 * c, norm, 0.0, True) for c in chans])
        self.enc = nn.ModuleList([conv_stages(k, 2 * c, 2 * c, norm, p, True) for k, c in zip((2, 3, 3, 3), chans)])
        self.dropout = nn.Dropout3d(0.5) if dropout else None

    def forward(self, x1: torch.Tensor, temb: torch.Tensor | None = None) -> list[torch.Tensor]:
        feats, x = [x1], x1
        for down, stages in zip(self.down, self.enc):
            x = _run(stages, down(x, temb), temb)
            feats.append(x)
        if self.dropout is not None:
            feats[-1] = self.dropout(feats[-1])
        return feats


class Decoder(nn.Module):
    """Stride-2 up blocks with additive skips + conv stages (3, 3, 2, 1) + 1x1x1 output conv;
    ``temb``: the diffusion decoder's time-embedding layers; Dropout3d(0.5) before the output
    conv with ``dropout``."""

    def __init__(self, n: int, num_classes: int, norm: str, p: float, dropout: bool, temb: bool):
        super().__init__()
        chans = (16 * n, 8 * n, 4 * n, 2 * n)
        self.up = nn.ModuleList([Stage(nn.ConvTranspose3d(c, c // 2, 2, stride=2), c // 2, norm, 0.0, temb) for c in chans])
        self.dec = nn.ModuleList([conv_stages(k, c // 2, c // 2, norm, p, temb) for k, c in zip((3, 3, 2, 1), chans)])
        self.dropout = nn.Dropout3d(0.5) if dropout else None
        self.out_conv = nn.Conv3d(n, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], temb: torch.Tensor | None = None) -> torch.Tensor:
        x = feats[4]
        for i, (up, stages) in enumerate(zip(self.up, self.dec)):
            x = _run(stages, up(x, temb) + feats[3 - i], temb)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.out_conv(x)


class ADNet(nn.Module):
    """GenericSSL's DiffVNet: shared encoder, decoders D_xi (diffusion), D_psi, D_theta.

    ``denoise(x_t, t, image)``: D_xi's x_0 logits; ``psi(image)`` / ``theta(image)``: the plain
    decoders' logits; all (B, C, D, H, W) for D, H, W divisible by 16.
    """

    def __init__(self, in_channels: int, num_classes: int, n: int, norm: str = "batchnorm", dropout: bool = False,
                 stage_dropout: float = 0.1):
        super().__init__()
        p = stage_dropout
        self.stem = Stage(nn.Conv3d(in_channels, n, 3, padding=1), n, norm, p)
        self.stem_xi = Stage(nn.Conv3d(in_channels + num_classes, n, 3, padding=1), n, norm, p)
        self.time_mlp = nn.Sequential(nn.Linear(TIME_DIM, TIME_HIDDEN), nn.SiLU(), nn.Linear(TIME_HIDDEN, TIME_HIDDEN))
        self.encoder = Encoder(n, norm, p, dropout)
        self.dec_xi = Decoder(n, num_classes, norm, p, dropout, temb=True)
        self.dec_psi = Decoder(n, num_classes, norm, p, dropout, temb=False)
        self.dec_theta = Decoder(n, num_classes, norm, p, dropout, temb=False)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t).to(self.time_mlp[0].weight.dtype))
        h = self.stem_xi(torch.cat([image, x_t.to(image.dtype)], dim=1))  # the stem takes no time embedding
        return self.dec_xi(self.encoder(h, temb), temb)

    def psi(self, image: torch.Tensor) -> torch.Tensor:
        return self.dec_psi(self.encoder(self.stem(image)))

    def theta(self, image: torch.Tensor) -> torch.Tensor:
        return self.dec_theta(self.encoder(self.stem(image)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.theta(image)


@torch.no_grad()
def aggregate(theta: nn.Module, xi: nn.Module, psi: nn.Module, w: float) -> None:
    """theta <- w theta + (1 - w)(xi + psi) / 2 over theta's parameters, matched by name
    (train_diffusion.py:235-240); buffers are left alone."""
    xi_p, psi_p = dict(xi.named_parameters()), dict(psi.named_parameters())
    for name, p in theta.named_parameters():
        p.mul_(w).add_((xi_p[name] + psi_p[name]) / 2, alpha=1.0 - w)


# ----------------------------------------------------------------------------- class weighting
class Difficulty(DiffDW):
    """GenericSSL's ``Difficulty`` (train_diffusion.py:124-160): DHC's DiffDW formula (hard Dice,
    learn / unlearn EMAs, momentum (K-1)/K) without DiffDW's normalisation by the maximum:
    w = C ((unlearn + 1e-8) / (learn + 1e-8))^(1/5) EMA(1 - Dice)."""

    def update_from_dice(self, dice: torch.Tensor) -> torch.Tensor:
        delta = dice - self.last_dice
        ratio = torch.log(dice / self.last_dice)
        zero = torch.zeros_like(delta)
        self.learn = ema(torch.where(delta > 0, delta, zero) * ratio, self.learn, self.momentum)
        self.unlearn = ema(torch.where(delta <= 0, delta, zero) * ratio, self.unlearn, self.momentum)
        self.last_dice = dice
        diff = torch.pow((self.unlearn + 1e-8) / (self.learn + 1e-8), 1 / 5)
        self.dice_weight = ema(1.0 - dice, self.dice_weight, self.momentum)
        self.weights = diff * self.dice_weight * self.num_classes
        return self.weights


# ----------------------------------------------------------------------------- method
@register_method("ad")
class AD(DHCEpochSchedule, Method):
    """A&D (Wang & Li, NeurIPS 2023): diffusion decoder, difficulty-weighted decoder and their
    aggregate trained on the pseudo-labels they make; inference with the aggregate."""

    family = "diffusion (A&D)"
    paper = "Wang & Li, A&D (Towards Generic Semi-Supervised Framework for Volumetric Medical Image Segmentation), NeurIPS 2023"
    code = "xmed-lab/GenericSSL"

    #: train_diffusion.py:104-121: SGD(lr, momentum 0.9, weight_decay 3e-5, nesterov=True)
    train_defaults = {"weight_decay": 3e-5}

    @dataclass
    class Hparams(BackboneHparams):
        #: train_diffusion.py:104-121 calls no initialiser: PyTorch's default
        init: Literal["kaiming", "xavier", "default"] = "default"
        #: the 0.1 Dropout3d after every conv stage (diff_vnet.py ConvBlock*OneStage), in training
        stage_dropout: float = setting(0.1, ge=0.0, lt=1.0)
        #: weight of L_u (README / train.sh ``-w 10``; the argparse default is 2.0)
        mu: float = setting(10.0, ge=0.0)
        #: the ramp's length as a fraction of the run (the release: rampup_epoch = max_epoch)
        mu_rampup: float = setting(1.0, ge=0.0)
        #: "epoch": lr and mu set once per epoch, one epoch late (train_diffusion.py:305-307); "step"
        schedule: Literal["epoch", "step"] = "epoch"
        #: D_theta <- ema_w D_theta + (1 - ema_w)(D_xi + D_psi) / 2 (``-s``, 0.99)
        ema_w: float = setting(0.99, ge=0.0, le=1.0)
        #: Difficulty(accumulate_iters=50) (train_diffusion.py:212)
        accumulate_iters: int = setting(50, ge=1)
        #: diffusion timesteps T (DiffVNet.time_steps) and DDIM steps of the pseudo-labels
        diffusion_steps: int = setting(1000, ge=20)
        sampling_steps: int = setting(10, ge=1)

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        hp = self.hp
        if hp.sampling_steps > hp.diffusion_steps:
            raise ValueError(f"sampling_steps {hp.sampling_steps} > diffusion_steps {hp.diffusion_steps}")
        net = ADNet(ctx.in_channels, ctx.num_classes, ctx.width, hp.normalization, hp.dropout, hp.stage_dropout)
        init_weights(net, hp.init)
        self.networks["net"] = net
        self.diffusion = Diffusion(hp.diffusion_steps, hp.sampling_steps)
        self.difficulty = Difficulty(ctx.num_classes, accumulate_iters=hp.accumulate_iters)
        self.kernel = gaussian_kernel(3, 1.0)  # GaussianSmoothing(num_cls, 3, 1) (train_diffusion.py:270)

    # -- random draws (global torch RNG; tests replace them) ---------------------------------
    def draw_timesteps(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.hp.diffusion_steps, (n,), device=device)

    def draw_noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like)

    def draw_sample_start(self, shape: tuple, device: torch.device) -> torch.Tensor:
        return torch.randn(shape, device=device)

    def draw_gumbel(self, like: torch.Tensor) -> torch.Tensor:
        """-log(Exp(1)) noise, as ``F.gumbel_softmax`` draws it."""
        return -torch.empty_like(like).exponential_().log()

    # -- pieces -------------------------------------------------------------------------------
    def unsup_weight(self, step: int) -> float:
        return self.hp.mu * sigmoid_rampup(self.schedule_step(step), self.hp.mu_rampup * self.ctx.iterations)

    def aggregate(self) -> None:
        net = self.networks["net"]
        aggregate(net.dec_theta, net.dec_xi, net.dec_psi, self.hp.ema_w)

    @torch.no_grad()
    def pseudo_label(self, image_u: torch.Tensor) -> torch.Tensor:
        """argmax(smooth(gumbel_softmax(DDIM x_0)) + softmax(D_psi(image_u))) (B, D, H, W)."""
        net = self.networks["net"]
        shape = (image_u.shape[0], self.ctx.num_classes, *image_u.shape[2:])
        x0 = self.diffusion.ddim_x0(lambda x, t: net.denoise(x, t, image_u), self.draw_sample_start(shape, image_u.device))
        p_xi = smooth(torch.softmax(x0 + self.draw_gumbel(x0), dim=1), self.kernel)
        p_psi = torch.softmax(net.psi(image_u).to(x0.dtype), dim=1)
        return (p_xi + p_psi).argmax(1)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        net = self.networks["net"]
        self.aggregate()  # at the start of each iteration, before the forward passes (train_diffusion.py:235)
        image, y = labeled["image"], labeled["label"].long()
        x0 = one_hot(y, self.ctx.num_classes) * 2 - 1
        t = self.draw_timesteps(y.shape[0], image.device)
        x_t = self.diffusion.q_sample(x0, t, self.draw_noise(x0))
        p_xi = net.denoise(x_t, t, image)
        p_psi = net.psi(image)
        deno = dhc_dc_ce_loss(p_xi, y)
        w = self.difficulty.update(p_xi.detach(), y)
        diff = dhc_dc_ce_loss(p_psi, y, w)
        if unlabeled is None:
            return Losses(deno + diff, {"deno": deno, "diff": diff})
        pl = self.pseudo_label(unlabeled["image"])
        unsup = dhc_dc_ce_loss(net.theta(unlabeled["image"]), pl)
        mu = self.unsup_weight(step)
        return Losses(deno + diff + mu * unsup, {"deno": deno, "diff": diff, "unsup": unsup, "w_unsup": torch.tensor(mu)})

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks["net"].theta(x)

    def running_state(self) -> dict:
        return {"difficulty": self.difficulty.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.difficulty.load_state_dict(state["difficulty"])

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "mu": trial.suggest_float("mu", 0.1, 30.0, log=True)}
