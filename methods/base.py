"""The method contract: a method owns its networks and losses; the engine owns the rest.

The engine (``bench.train``) owns the loop, optimiser, LR schedule, AMP, checkpointing,
timing and evaluation. A method implements::

    class MyMethod(Method):
        class Hparams(Method.Hparams):      # dataclass of hyperparameters (+ defaults)
            my_weight: float = 0.1
        def __init__(self, ctx, **hparams)  # build networks from ctx (classes, patch, width)
        def training_step(self, labeled, unlabeled, step) -> Losses
        def after_step(self, step)           # EMA updates, running statistics
        def predict(self, x) -> logits       # (B, 1, D, H, W) -> (B, C, D, H, W)
        @staticmethod
        def search_space(trial) -> dict      # Optuna

and registers itself with ``@register_method("my_method")``.

Batches are dicts: ``labeled = {"image": (B, 1, D, H, W) float, "label": (B, D, H, W) long}``,
``unlabeled = {"image": (B, 1, D, H, W)}`` - unlabeled batches carry no labels at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass
class MethodContext:
    """What a method needs to know to build itself."""

    num_classes: int  # including background
    class_names: tuple[str, ...]
    patch_size: tuple[int, int, int]
    width: int = 16  # base number of filters of the backbone
    in_channels: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    iterations: int = 1000
    #: voxel count per class over the labeled training cases (C,)
    labeled_voxel_counts: np.ndarray | None = None
    #: number of unlabeled training cases (0 for label-only methods)
    n_unlabeled: int = 0
    #: unlabeled images per step: with ``n_unlabeled`` it gives the released scripts' epoch
    #: (one pass over the unlabeled cases) for schedules counted in epochs
    unlabeled_bs: int = 2
    #: number of labeled training cases and labeled images per step (releases whose epoch is one
    #: pass over the labeled cases, e.g. Co-BioNet's TwoStreamBatchSampler)
    n_labeled: int = 0
    labeled_bs: int = 2
    #: returns text-prior embeddings (n_views * C, dim) for the run's prompts and encoder
    priors: Callable[[], torch.Tensor] | None = None
    seed: int = 0

    @property
    def epoch_length(self) -> int:
        """Steps per epoch of the released loops: one pass over the unlabeled cases (at least 1)."""
        return max(1, self.n_unlabeled // max(1, self.unlabeled_bs))


class RunningState:
    """Running statistics kept outside the networks (class weights, confidence banks, ...):
    checkpointed as copies of all their attributes."""

    def state_dict(self) -> dict:
        return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone() if torch.is_tensor(v) else v)


@dataclass
class Losses:
    """``total`` is back-propagated; ``parts`` are named terms (tensors, kept for tests/logs)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def log_values(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach())}
        out.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in self.parts.items()})
        return out


@dataclass(frozen=True)
class PriorSpec:
    """The text priors a method takes (``ctx.priors``): each of the prompt set and the text
    encoder is either the run's (None: ``--prompts`` / ``--text-encoder``, and the run expands
    over them) or fixed here. With both fixed the run does not expand and records them as
    ``fixed_priors`` (e.g. ``tak_no_text``: hash vectors)."""

    prompts: str | None = None
    encoder: str | None = None

    @property
    def fixed(self) -> bool:
        """Both parts fixed: the method takes no priors from the run."""
        return self.prompts is not None and self.encoder is not None

    def grid(self, prompts: list[str], encoders: list[str]) -> list[tuple[str, str]]:
        """(prompt set, encoder) pairs of a run asked for ``prompts`` x ``encoders``."""
        return [(p, e) for p in ([self.prompts] if self.prompts else prompts) for e in ([self.encoder] if self.encoder else encoders)]


class Method:
    """Base class of all methods. Subclasses set ``networks`` (trained) and ``teachers`` (EMA)."""

    # -- class flags: what a method declares about itself (none of them is an Hparams field) --
    #: the name it is registered under (set by ``@register_method``)
    registry_name: ClassVar[str] = ""
    #: what ``bench list methods`` shows, read from the source without importing the module
    #: (string literals only): the method's family in this suite, its paper (authors, name,
    #: venue and year) and the released repository it follows ("" where none was released)
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    code: ClassVar[str] = ""
    #: "split": labeled cases of the split are labeled; "all": every training case is labeled
    label_policy: ClassVar[str] = "split"
    #: whether the method consumes unlabeled batches
    uses_unlabeled: ClassVar[bool] = True
    #: the text priors the method takes (:class:`PriorSpec`); None: none
    text_priors: ClassVar[PriorSpec | None] = None
    #: why the method may not have started to learn in a short run (shown with such a run's
    #: results); empty when there is no known reason
    slow_start: ClassVar[str] = ""
    #: runs shorter than this many steps are told before training that they may measure the
    #: slow start, not the method (0: no known slow start)
    slow_start_steps: ClassVar[int] = 0
    #: False: the engine back-propagates ``Losses.total`` and steps every optimiser. True: the
    #: method does it inside ``training_step`` through its ``opt`` argument (``opt.zero_grad(name)``,
    #: ``opt.backward(loss)``, ``opt.step(name)``: the engine's AMP scaler, gradient averaging,
    #: clipping and finiteness check), for several backward passes per step
    manual_optimization: ClassVar[bool] = False
    #: True: ``training_step`` calls each trained network (``networks[k]``) only through its
    #: ``forward`` (``self.networks[k](x)``, looked up in the dict at each call, never a submodule
    #: or another method such as ``encode``), so a multi-process run may wrap the networks in
    #: DistributedDataParallel (``bench.distributed.ddp_compatible``). Holds only for the
    #: ``training_step`` of the class that declares it: a subclass that overrides
    #: ``training_step`` declares it again, else it runs on the hand-written gradient average
    ddp_compatible: ClassVar[bool] = False
    #: engine settings of the method's released code (e.g. ``{"nesterov": False}``): they replace
    #: the engine's defaults for this method, below presets, config files and the command line
    train_defaults: ClassVar[dict[str, Any]] = {}

    @dataclass
    class Hparams:
        pass

    def __init__(self, ctx: MethodContext, **hparams: Any):
        self.ctx = ctx
        self.hp = self.Hparams(**hparams)
        self.networks: dict[str, nn.Module] = {}
        self.teachers: dict[str, nn.Module] = {}

    @classmethod
    def check_settings(cls, hp: Any, train: Any) -> None:
        """Refuse a combination of hyperparameters ``hp`` (``cls.Hparams``) and engine settings
        ``train`` (``TrainConfig``) that cannot work, before any data is read.

        Raises:
            UserError: one line naming the setting and the fix.
        """

    # -- what the engine needs ------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Everything that is checkpointed (trained networks and EMA teachers)."""
        return {**self.networks, **self.teachers}

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (never the teachers')."""
        seen: set[int] = set()
        params = []
        for net in self.networks.values():
            for p in net.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def train(self, mode: bool = True) -> None:
        for net in self.networks.values():
            net.train(mode)
        for net in self.teachers.values():
            net.train(mode)

    def to(self, device: torch.device) -> "Method":
        for d in (self.networks, self.teachers):
            for k in d:
                d[k] = d[k].to(device)
        return self

    def optimizers(self, train: Any) -> dict[str, tuple[torch.optim.Optimizer, Callable[[int], float]]] | None:
        """The method's own optimisers: ``{name: (optimizer, schedule)}``, ``schedule(step)`` giving
        the learning rate of all its parameter groups at ``step`` (``train``: the run's
        ``TrainConfig``). None (the default): one SGD over :meth:`parameters` with the run's
        momentum, weight decay, Nesterov and poly schedule. Checkpointed and resumed by name."""
        return None

    def schedule_step(self, step: int) -> int:
        """The step whose learning rate the default poly schedule gives step ``step`` (itself by
        default; a release that sets the lr after the step runs one step behind)."""
        return step

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int, opt: Any = None) -> Losses:
        """One step's losses. ``labeled``: image (B, 1, D, H, W) and label (B, D, H, W);
        ``unlabeled``: image only, or None; ``opt``: the engine's step control with
        ``manual_optimization`` (None otherwise). Returns the total and its named parts."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (EMA updates, running statistics)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, D, H, W) for images (B, 1, D, H, W); the engine sets eval mode."""
        raise NotImplementedError

    def running_state(self) -> dict:
        """Running state beyond module weights (class weights, EMAs of statistics)."""
        return {}

    def load_running_state(self, state: dict) -> None:
        pass

    @staticmethod
    def search_space(trial: Any) -> dict:
        """Optuna search space: hyperparameter / engine setting -> suggested value. Every method
        searches the learning rate; subclasses add their own (``{**Parent.search_space(trial), ...}``)."""
        return {"lr": trial.suggest_float("lr", 1e-3, 0.3, log=True)}

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls.Hparams) if f.default is not dataclasses.MISSING}
