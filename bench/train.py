"""The one training loop, with validation, checkpoint/resume, timing and the final test.

Used by every method: SGD (Nesterov) with poly LR, AMP on CUDA, optional gradient clipping,
periodic validation on the eval split with best-checkpoint selection, a checkpoint every
``ckpt_every`` steps (``run`` again continues where a killed run stopped), one log line per
``log_every`` steps, and timing of every step.

Determinism: the batch of step ``t`` and the torch random state at step ``t`` depend only on
``(seed, t)``, so a resumed CPU run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench import distributed
from bench.cases import RunCases
from bench.checkpoint import Checkpointer
from bench.core.errors import UserError
from bench.core.plan import TrainConfig
from bench.core.protocol import Protocol
from bench.core.records import ConfigRecord, MetricsRecord, write_record
from bench.data import Prefetcher, TwoStreamSampler
from bench.evaluator import Evaluator
from bench.step import TrainStep, make_optimizers
from bench.timing import StepTimer
from datasets.base import Dataset
from datasets.splits import Split
from methods.base import Method, MethodContext


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT or SIGTERM) after saving a checkpoint; ``signum`` says which."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = int(signum)


class NonFiniteLoss(UserError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""


@dataclass
class RunSpec:
    """Everything one run needs."""

    method_name: str
    method_cls: type
    hparams: dict[str, Any]
    train: TrainConfig
    dataset: Dataset
    protocol: Protocol
    split: Split
    seed: int
    device: torch.device
    run_dir: Path
    priors: Callable[[], torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: stop after this many steps in this process (tests of resume); None = run to the end
    stop_after: int | None = None
    progress: bool = True
    #: prompt set and text encoder of a text-prior run, recorded in metrics.json
    priors_names: dict[str, Any] = field(default_factory=dict)
    #: called with (step, validation Dice) after each validation (Optuna reports and prunes here)
    on_validate: Callable[[int, float], None] | None = None
    #: write each test case's prediction as predictions/<case>.nii.gz (source image geometry)
    save_predictions: bool = False
    #: signals that stop training at the next step boundary, after a checkpoint (a Slurm job adds
    #: submitit's preemption signal, USR2 by default)
    stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    #: where the loop says that it resumed or stopped (None: silent)
    log: Callable[[str], None] | None = None
    #: experiment trackers told what log.jsonl gets, an overlay per validation and the test
    #: results (bench/trackers.py); ``results_dir``: the results folder (MLflow's local store)
    trackers: tuple[str, ...] = ()
    results_dir: Path | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators with ``seed``."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _channels_last(batch: dict | None) -> dict | None:
    """Images (B, 1, D, H, W) of a batch in ``channels_last_3d`` layout."""
    if batch is None:
        return None
    return {k: v.contiguous(memory_format=torch.channels_last_3d) if v.dim() == 5 else v for k, v in batch.items()}


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


class Trainer:
    """The training loop of one run, built from its parts: :class:`bench.cases.RunCases` (the
    cases, loaded and checked first: bad input leaves nothing behind), the method and its
    optimisers in a :class:`bench.step.TrainStep`, a :class:`bench.checkpoint.Checkpointer`
    (checkpoint.pt, best.pt, log.jsonl) and an :class:`bench.evaluator.Evaluator` (validation,
    test, records). :meth:`fit` trains (resuming from the latest checkpoint), :meth:`test`
    scores the best checkpoint.

    Args:
        spec: the run (:class:`RunSpec`).

    Raises:
        UserError: bad data, a batch that does not split over the processes.
    """

    def __init__(self, spec: RunSpec):
        self.spec, self.t, self.device = spec, spec.train, spec.device
        self.dir = Path(spec.run_dir)
        seed_everything(spec.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True
        self.cases = RunCases(spec.dataset, spec.protocol, spec.split, spec.method_cls)
        self.method: Method = self._build_method()
        self.rank, self.world = distributed.rank(), (distributed.world_size() if distributed.active() else 1)
        if self.world > 1:
            if self.t.labeled_bs % self.world or self.t.unlabeled_bs % self.world:
                raise UserError(f"labeled_bs {self.t.labeled_bs} and unlabeled_bs {self.t.unlabeled_bs} must be multiples of "
                                f"the {self.world} processes (each takes an equal slice of every batch); use --set labeled_bs=...")
            distributed.broadcast_modules(self.method.modules().values())
            if self.t.sync_bn:  # the trained networks only; before they are wrapped
                distributed.convert_sync_batchnorm(self.method, self.device)
        #: DDP over the trained networks (ddp="auto" and a compatible method), else None: the hand-written average
        self.ddp = distributed.wrap_networks(self.method, self.device, self.t.ddp) if self.world > 1 else None
        self.train_step = TrainStep(self.method, make_optimizers(self.method, self.t), self.device, self.t.amp, self.t.grad_clip,
                                    check=self._check_finite, average=distributed.average_gradients if self.world > 1 else None,
                                    ddp=self.ddp)
        self.use_amp = self.train_step.amp
        self.checkpoints = Checkpointer(self.dir, self.device, self.rank)
        self.evaluator = Evaluator(spec, self.cases, self.use_amp)
        self.step = 0
        self.last_good = 0
        self.best = {"score": -math.inf, "step": -1}
        #: the run's experiment trackers (bench/trackers.py), made when training starts; None: none
        self.trackers = None
        self.step_times: list[float] = []
        self.data_times: list[float] = []
        self.train_wall = 0.0

    def _build_method(self) -> Method:
        """The method on the run's device, with the execution switches (channels-last, compile)."""
        spec, t, ds = self.spec, self.t, self.spec.dataset
        self.ctx = MethodContext(num_classes=ds.num_classes, class_names=ds.labels, patch_size=tuple(t.patch), width=t.width,
                                 device=self.device, iterations=t.iterations, labeled_voxel_counts=self.cases.counts,
                                 n_unlabeled=len(self.cases.unlabeled), unlabeled_bs=t.unlabeled_bs, n_labeled=len(self.cases.labeled),
                                 labeled_bs=t.labeled_bs, priors=spec.priors, seed=spec.seed)
        method = spec.method_cls(self.ctx, **spec.hparams).to(self.device)
        if t.channels_last:  # execution only: same values, another memory layout
            for net in method.modules().values():
                net.to(memory_format=torch.channels_last_3d)
        if t.compile:  # in place: state_dict keys (checkpoints) stay the same
            for net in method.modules().values():
                net.compile()
        return method

    @property
    def labeled(self) -> list:
        """The labeled (image, label) pairs on the protocol grid."""
        return self.cases.labeled

    @property
    def unlabeled(self) -> list:
        """The unlabeled images on the protocol grid."""
        return self.cases.unlabeled

    def _timing(self) -> dict:
        return {"step": self.step_times, "data": self.data_times, "wall": self.train_wall}

    def _log(self, record: dict) -> None:
        """One line of log.jsonl, also sent to the run's trackers."""
        self.checkpoints.log(record)
        if self.trackers:
            self.trackers.log(record)

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the latest state (rank 0)."""
        self.checkpoints.save(self.step, self.method, self.train_step, self.best, self._timing())

    def load_checkpoint(self) -> bool:
        """Resume from the latest checkpoint, if there is one."""
        state = self.checkpoints.load(self.method, self.train_step)
        if state is None:
            self.checkpoints.truncate_log(0)  # a run killed before its first checkpoint starts a clean log
            return False
        self.best, self.step = state["best"], state["step"]
        self.step_times, self.data_times = list(state["timing"]["step"]), list(state["timing"]["data"])
        self.train_wall = float(state["timing"]["wall"])
        return True

    # -- training -------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the latest checkpoint (or step 0) to ``iterations`` (or ``stop_after`` more
        steps): validation every ``val_every`` steps, a checkpoint every ``ckpt_every`` and at the
        end. A signal of ``spec.stop_signals`` (Ctrl-C / SIGINT, SIGTERM: what Slurm and Kubernetes
        send; submitit's USR2 in a Slurm job) finishes the step in flight, saves a checkpoint and
        stops (raises :class:`Interrupted`: exit status 130 / 143); under torch.distributed every
        rank stops at the same step (the signals are all-reduced at each step boundary)."""
        t, spec = self.t, self.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints.clean_temp()
        resumed = self.load_checkpoint()
        if resumed and spec.log is not None and self.rank == 0:
            spec.log(f"resumed from its checkpoint at step {self.step} of {t.iterations}")
        if self.step >= t.iterations:
            return
        if spec.trackers and self.rank == 0 and not self.trackers:
            from bench.trackers import Trackers

            cfg = self.dir / "config.json"  # the record itself, so that live and `bench track` log the same parameters
            config = json.loads(cfg.read_text()) if cfg.exists() else spec.config
            self.trackers = Trackers(spec.trackers, self.dir, spec.results_dir or self.dir.parent, config, self.step)
        sampler = TwoStreamSampler(self.cases.labeled, self.cases.unlabeled, t.patch, t.labeled_bs, t.unlabeled_bs, spec.seed, t.flip,
                                   rank=self.rank, world=self.world)
        stop = t.iterations if spec.stop_after is None else min(t.iterations, self.step + spec.stop_after)
        loader = Prefetcher(sampler, self.step, stop, self.device)
        bar = self._progress_bar(resumed)
        self.method.train(True)
        self.last_good = self.step
        interrupted: list = []
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, lambda signum, _: interrupted.append(signum)) for s in spec.stop_signals}
        try:
            while self.step < stop:
                losses = self._train_one(loader)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(losses.total.detach()):.3f}", refresh=False)
                    bar.update(1)
                self._after_step(stop, self._stop_signal(interrupted))
            if self.world > 1:
                distributed.check_in_sync(self.method.parameters())
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            loader.close()
            if bar is not None:
                bar.close()

    def _progress_bar(self, resumed: bool):
        if not self.spec.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.t.iterations, initial=self.step, desc=f"{self.spec.method_name} seed {self.spec.seed}"
                    + (" (resumed)" if resumed else ""), unit="it", dynamic_ncols=True, leave=False)

    def _train_one(self, loader: Prefetcher):
        """One step: learning rates, the step's random state, its batch, the timed step, the log."""
        t, step = self.t, self.step
        lrs = self.train_step.set_lr(step)
        torch.manual_seed(_step_seed(self.spec.seed, step))
        labeled, unlabeled, wait = loader.get()
        if t.channels_last:
            labeled, unlabeled = _channels_last(labeled), _channels_last(unlabeled)
        with StepTimer(self.device) as timer:
            losses = self.train_step(labeled, unlabeled, step)
        if step >= t.timing_warmup:
            self.step_times.append(timer.seconds)
            self.data_times.append(wait)
        self.train_wall += timer.seconds + wait
        self.step = step + 1
        if step % t.log_every == 0 or self.step == t.iterations:
            lr = {"lr": lrs["main"]} if list(lrs) == ["main"] else {f"lr_{k}": v for k, v in lrs.items()}
            self._log({"step": step, **lr, **losses.log_values(), "s_iter": timer.seconds, "data_wait": wait})
        return losses

    def _stop_signal(self, received: list) -> int:
        """The signal that stops training after this step (0: none); with several processes the
        largest any rank received, so that all ranks stop (and checkpoint) at the same step."""
        signum = received[0] if received else 0
        if self.world > 1:
            flag = torch.tensor([signum], dtype=torch.int64, device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _after_step(self, stop: int, interrupted: int) -> None:
        """Validation and checkpoint when due; stop after a checkpoint when interrupted."""
        t = self.t
        if self.rank == 0 and t.val_every > 0 and self.spec.split.eval and (self.step % t.val_every == 0 or self.step == t.iterations):
            self.validate()
        if self.step % t.ckpt_every == 0 or self.step == t.iterations or self.step == stop or interrupted:
            self.save_checkpoint()
            self.last_good = self.step
        if interrupted:
            if self.spec.log is not None and self.rank == 0:
                self.spec.log(f"stopped by {signal.Signals(interrupted).name} after step {self.step}; checkpoint written")
            raise Interrupted(interrupted)

    def _check_finite(self, losses, step: int) -> None:
        if torch.isfinite(losses.total.detach()).all():
            return
        bad = [k for k, v in losses.parts.items() if torch.is_tensor(v) and not torch.isfinite(v.detach()).all()]
        part = ", ".join(bad) if bad else "total"
        kept = (f"the last good checkpoint (step {self.last_good}) is kept in {self.dir}" if self.checkpoints.path.exists()
                else "no checkpoint had been written yet")
        raise NonFiniteLoss(
            f"{self.spec.method_name}: loss is not finite at step {step} (part: {part}); {kept}; check the inputs "
            f"(text priors, images), lower the learning rate (--set lr=...) or enable --set grad_clip=1"
        )

    # -- evaluation -----------------------------------------------------------------------
    def validate(self) -> float:
        """Validation Dice on the eval cases; keeps best.pt on improvement and tells
        ``spec.on_validate`` (Optuna reports and prunes there)."""
        score, per_organ, slices = self.evaluator.validation(self.method, overlay=bool(self.trackers))
        improved = score > self.best["score"] or self.best["step"] < 0
        if improved:
            self.best = {"score": score, "step": self.step}
            self.checkpoints.save_best(self.method, self.step)
        self._log({"step": self.step - 1, "val_dice": score, **{f"val_dice/{o}": v for o, v in per_organ.items()}, "best": improved})
        if slices is not None and len(slices["organ"]):
            from reports.overlays import render_case

            self.trackers.image("val_overlay", render_case(slices), self.step)
        if self.spec.on_validate is not None:
            self.spec.on_validate(self.step, score)
        return score

    def test(self) -> MetricsRecord:
        """Score the best checkpoint (else the last weights) on the test cases; writes the records."""
        used = self.checkpoints.load_best(self.method)
        used_step = self.step if used is None else used
        val = None if self.best["step"] < 0 else self.best["score"]
        return self.evaluator.test(self.method, used_step, val, self._timing())


def run_one(spec: RunSpec) -> MetricsRecord | None:
    """Train (or resume), then test on the split's test cases; writes the run folder."""
    trainer = Trainer(spec)  # loads and checks all data first: bad input leaves nothing behind
    if trainer.rank == 0:
        write_record(spec.run_dir / "config.json", ConfigRecord.from_dict({**spec.config, "world_size": trainer.world}))
    metrics, status = None, "KILLED"  # stopped (to resume later) or failed: the trackers' runs say so
    try:
        trainer.fit()
        if trainer.step >= spec.train.iterations and trainer.rank == 0:
            metrics, status = trainer.test(), "FINISHED"
    finally:
        if trainer.trackers:
            timing = json.loads((spec.run_dir / "timing.json").read_text()) if metrics is not None else None
            trainer.trackers.finish(metrics.to_dict() if metrics is not None else None, timing, trainer.step, status=status)
    return metrics
