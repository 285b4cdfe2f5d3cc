"""A run, resolved once: :class:`RunPlan` and the engine settings it carries (:class:`TrainConfig`).

``bench.runner.resolve`` turns a request (config file, flags, ``--set``) into one
:class:`RunPlan` per run of the matrix (method x prompt set x text encoder x seed), reading no
data; ``RunPlan.bound`` adds the split's name and digest once the dataset is read, and with them
the config hash and the run folder. Everything downstream (``--dry-run``, ``run``, ``tune``,
``perf``, the trainer, ``config.json``) reads these fields; nothing re-parses a string. A plan is
plain data: its :meth:`RunPlan.identity` is what the config hash covers, and what ``config.json``
records (reports read that record and never import the engine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.core.protocol import Protocol
from bench.core.settings import setting
from bench.core.store import config_hash, run_dir


@dataclass
class TrainConfig:
    """Engine settings (the same loop for every method)."""

    iterations: int = setting(600, ge=1)
    lr: float = setting(0.01, gt=0.0)
    momentum: float = setting(0.9, ge=0.0, lt=1.0)
    weight_decay: float = setting(1e-4, ge=0.0)
    nesterov: bool = True
    poly_power: float = setting(0.9, ge=0.0)
    #: horizon of the poly decay lr (1 - step / horizon)^power, in iterations; "run" = the run's
    #: length (decay to 0 at the end). TAK and GALoss decay over 70,000 and stop earlier.
    lr_horizon: int | Literal["run"] = setting("run", ge=1)
    labeled_bs: int = setting(2, ge=1)
    unlabeled_bs: int = setting(2, ge=0)
    patch: tuple[int, int, int] = (32, 64, 64)
    width: int = setting(8, ge=1)
    grad_clip: float = setting(0.0, ge=0.0)
    #: autocast on CUDA (CPU runs stay fp32): true = bf16 where the GPU supports it (the
    #: suite's); "fp16" = fp16 with a GradScaler, as the released scripts' torch.cuda.amp
    amp: bool | Literal["fp16"] = True
    val_every: int = setting(100, ge=0)
    val_overlap: float = setting(0.25, ge=0.0, lt=1.0)
    #: test-time sliding-window overlap; "protocol" = the protocol's overlap or stride
    overlap: float | Literal["protocol"] = setting("protocol", ge=0.0, lt=1.0)
    sw_batch_size: int = setting(2, ge=1)
    ckpt_every: int = setting(50, ge=1)
    log_every: int = setting(10, ge=1)
    timing_warmup: int = setting(5, ge=0)
    #: random flips along H and W; off by default: a left-right flip turns the right kidney into
    #: a "left" one at the wrong side (measured effect: docs/performance.md)
    flip: bool = False
    #: execution only (not part of a run's identity, see ``EXECUTION_ONLY``): compile every
    #: network with ``torch.compile`` / keep activations in ``channels_last_3d`` memory format
    compile: bool = False
    channels_last: bool = False
    #: execution only: how a multi-process run (torchrun) averages gradients. "auto" =
    #: DistributedDataParallel over the trained networks of a method that declares
    #: ``ddp_compatible`` (communication overlapped with backward), the hand-written all_reduce
    #: after backward for the others; "off" = the hand-written average for every method (the
    #: reference). Equal up to floating point (tests/test_ddp.py)
    ddp: Literal["auto", "off"] = "auto"
    #: multi-process runs: the trained networks' BatchNorm layers normalise with the statistics
    #: of the whole global batch (torch.nn.SyncBatchNorm; CUDA only) instead of each process'
    #: slice. Part of a run's identity only when it acts (true, more than one process)
    sync_bn: bool = False

    @property
    def horizon(self) -> int:
        """The poly schedule's horizon in iterations (``lr_horizon``, or the run's length)."""
        return self.iterations if self.lr_horizon == "run" else int(self.lr_horizon)


#: engine settings that change how fast a run goes, not what it computes: kept out of the
#: config hash (a run resumed with them switched keeps its folder), recorded in config.json
EXECUTION_ONLY = ("compile", "channels_last", "ddp")
#: engine settings in a run's identity only where they act, so that the hashes of runs without
#: them stay as they were: setting -> whether it acts (given the plan)
IDENTITY_WHEN_ACTIVE = {"sync_bn": lambda plan: bool(plan.train.sync_bn and plan.world_size > 1)}


@dataclass(frozen=True)
class DatasetChoice:
    """The dataset of a run: its registry name, its folder (None: generated, e.g. the phantom)
    and its ``--dataset-opt`` / ``--label-map`` options."""

    name: str
    data_root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitChoice:
    """The split a run trains on: a named or file split (``name``), or one drawn with
    ``labeled_fraction`` of the training cases labeled (a number, 0.1 = 10 %). Once the dataset
    is read, ``name`` is the resolved split's name and ``digest`` its content hash."""

    name: str | None = None
    labeled_fraction: float | None = None
    digest: str | None = None

    def identity(self) -> dict[str, Any]:
        """What the config hash covers: name and digest once known, else what was asked."""
        if self.digest is not None:
            return {"name": self.name, "digest": self.digest}
        return {"name": self.name} if self.name else {"labeled_fraction": self.labeled_fraction}


@dataclass(frozen=True)
class PriorChoice:
    """The text priors of a run: a prompt set and a text encoder spec (``name`` or ``name:arg``),
    either the run's (``--prompts`` x ``--text-encoder``) or fixed by the method (``fixed``)."""

    prompts: str
    text_encoder: str
    fixed: bool = False


@dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, resolved once (plain data; see the module docstring).

    ``train`` is the method's engine settings after every layer, ``hparams`` its typed
    hyperparameters (defaults included), ``protocol`` the protocol with its options applied,
    ``device`` the resolved device name (``cpu``, ``cuda``, ``cuda:1``). ``hash`` and ``dir`` are
    set by :meth:`bound`, once the split is known.
    """

    method: str
    seed: int
    train: TrainConfig
    hparams: dict[str, Any]
    dataset: DatasetChoice
    preset: str
    protocol: Protocol
    split: SplitChoice
    priors: PriorChoice | None = None
    device: str = "cpu"
    world_size: int = 1
    hash: str | None = None
    dir: Path | None = None

    def identity(self) -> dict[str, Any]:
        """The resolved config the run folder's hash covers (execution-only settings and the
        seed left out: the seed is a folder level of its own)."""
        train = dataclasses.asdict(self.train)
        for k in EXECUTION_ONLY:
            train.pop(k)
        for k, acts in IDENTITY_WHEN_ACTIVE.items():
            if not acts(self):
                train.pop(k)
        out: dict[str, Any] = {"method": self.method, "hparams": dict(self.hparams), "train": train, "dataset": self.dataset.name,
                               "preset": self.preset, "protocol": self.protocol.describe(), "split": self.split.identity()}
        if self.priors is not None and self.priors.fixed:
            out["fixed_priors"] = [self.priors.prompts, self.priors.text_encoder]
        elif self.priors is not None:
            out["prompts"], out["text_encoder"] = self.priors.prompts, self.priors.text_encoder
        if self.world_size > 1:  # a distributed run is another run (batch-pooled losses see slices)
            out["world_size"] = self.world_size
        return out

    def execution(self) -> dict[str, Any]:
        """The execution-only engine settings (``EXECUTION_ONLY``)."""
        return {k: getattr(self.train, k) for k in EXECUTION_ONLY}

    def describe(self) -> dict[str, Any]:
        """What ``--dry-run`` prints: the identity, the dataset in full, seed and execution."""
        d = self.identity()
        d.update(dataset={"name": self.dataset.name, "data_root": self.dataset.data_root, "options": dict(self.dataset.options)},
                 seed=self.seed, execution=self.execution())
        return d

    def config(self) -> dict[str, Any]:
        """What ``config.json`` records of the plan (provenance is added by the runner)."""
        return {**self.identity(), "execution": self.execution(), "seed": self.seed, "config_hash": self.hash, "device": self.device}

    def bound(self, split_name: str, digest: str, out: str | Path) -> RunPlan:
        """This plan with the resolved split (name and digest), its config hash and its folder
        under ``out``."""
        plan = dataclasses.replace(self, split=dataclasses.replace(self.split, name=split_name, digest=digest))
        h = config_hash(plan.identity())
        return dataclasses.replace(plan, hash=h, dir=run_dir(Path(out), self.dataset.name, self.protocol.name, split_name,
                                                              self.method, h, self.seed))


__all__ = ["EXECUTION_ONLY", "IDENTITY_WHEN_ACTIVE", "DatasetChoice", "PriorChoice", "RunPlan", "SplitChoice", "TrainConfig"]
