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

from bench import distributed, lock
from bench.config import TrainConfig
from bench.core.errors import UserError
from bench.core.metrics import case_metrics, nanmean
from bench.core.protocol import Protocol
from bench.core.records import ConfigRecord, MetricsRecord, TimingRecord, write_record
from bench.core.scoring import penalty_distance, score_case
from bench.core.store import atomic_save, atomic_write_text, safe_name
from bench.core.threads import current_threads
from bench.data import Prefetcher, TwoStreamSampler
from bench.inference import predict_volume
from bench.step import TrainStep, make_optimizers
from bench.timing import StepTimer, device_description, peak_memory, reset_peak_memory, summarize_times
from datasets.base import Dataset
from datasets.splits import Split
from methods.base import Method, MethodContext


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
    """One run: loads and checks its cases, builds the method and its optimisers, trains with
    checkpoints and validation (:meth:`fit`), tests the best checkpoint and writes the records
    (:meth:`test`).
    """

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.t = spec.train
        self.device = spec.device
        self.dir = Path(spec.run_dir)
        seed_everything(spec.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True

        split = spec.split
        cls = spec.method_cls
        labeled_ids = split.train if cls.label_policy == "all" else split.labeled
        unlabeled_ids = split.unlabeled if (cls.uses_unlabeled and cls.label_policy != "all") else []
        ds = spec.dataset
        self.labeled = [(self._image(c), self._label(c)) for c in labeled_ids]
        # unlabeled cases: images only - their labels are never read
        self.unlabeled = [self._image(c) for c in unlabeled_ids]
        for cid in split.eval + split.test:  # fail now, not after hours of training
            if not np.isfinite(np.asarray(ds.load_image(cid))).all():
                raise UserError(f"image of case '{cid}' of dataset '{ds.name}' contains NaN or infinite values; fix or re-export it")
        # labels checked once here; validation reuses the eval ones on the protocol grid
        self.eval_labels = {cid: self._label(cid) for cid in split.eval}
        for cid in split.test:
            _checked_label(ds, cid)
        counts = np.zeros(ds.num_classes, dtype=np.int64)
        for _, lab in self.labeled:
            counts += np.bincount(lab.ravel(), minlength=ds.num_classes)[: ds.num_classes]
        self.ctx = MethodContext(
            num_classes=ds.num_classes,
            class_names=ds.labels,
            patch_size=tuple(self.t.patch),
            width=self.t.width,
            device=self.device,
            iterations=self.t.iterations,
            labeled_voxel_counts=counts,
            n_unlabeled=len(self.unlabeled),
            unlabeled_bs=self.t.unlabeled_bs,
            priors=spec.priors,
            seed=spec.seed,
        )
        self.method: Method = cls(self.ctx, **spec.hparams).to(self.device)
        if self.t.channels_last:  # execution only: same values, another memory layout
            for net in self.method.modules().values():
                net.to(memory_format=torch.channels_last_3d)
        if self.t.compile:  # in place: state_dict keys (checkpoints) stay the same
            for net in self.method.modules().values():
                net.compile()
        self.rank, self.world = distributed.rank(), (distributed.world_size() if distributed.active() else 1)
        if self.world > 1:
            if self.t.labeled_bs % self.world or self.t.unlabeled_bs % self.world:
                raise UserError(f"labeled_bs {self.t.labeled_bs} and unlabeled_bs {self.t.unlabeled_bs} must be multiples of "
                                f"the {self.world} processes (each takes an equal slice of every batch); use --set labeled_bs=...")
            distributed.broadcast_modules(self.method.modules().values())
        self.train_step = TrainStep(self.method, make_optimizers(self.method, self.t), self.device, self.t.amp, self.t.grad_clip,
                                    check=self._check_finite, average=distributed.average_gradients if self.world > 1 else None)
        self.use_amp = self.train_step.amp
        self.scaler = self.train_step.scaler
        self.step = 0
        self.last_good = 0
        self.best = {"score": -math.inf, "step": -1}
        self.step_times: list[float] = []
        self.data_times: list[float] = []
        self.train_wall = 0.0

    def _image(self, case_id: str) -> np.ndarray:
        """Normalised image on the protocol grid (D, H, W) float32."""
        return self.spec.protocol.prepare_image(self.spec.dataset.load_image(case_id), f"image of case '{case_id}'")

    def _label(self, case_id: str) -> np.ndarray:
        """Checked label map on the protocol grid (D, H, W)."""
        return self.spec.protocol.prepare_label(_checked_label(self.spec.dataset, case_id))

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {
            "step": self.step,
            "modules": {k: m.state_dict() for k, m in self.method.modules().items()},
            **self._optimizer_state(),
            "scaler": self.scaler.state_dict(),
            "method_state": self.method.running_state(),
            "best": self.best,
            "timing": {"step": self.step_times, "data": self.data_times, "wall": self.train_wall},
        }
        atomic_save(self.ckpt_path, lambda f: torch.save(state, f))
        lock.touch(self.dir)  # a live claim stays fresh

    def _optimizer_state(self) -> dict:
        """``{"optimizer": state}`` for the default single optimiser (the layout of every earlier
        checkpoint), ``{"optimizers": {name: state}}`` for a method's own named optimisers."""
        opts = self.train_step.optimizers
        if list(opts) == ["main"]:
            return {"optimizer": opts["main"].state_dict()}
        return {"optimizers": {k: o.state_dict() for k, o in opts.items()}}

    def _load_optimizer_state(self, state: dict) -> None:
        opts = self.train_step.optimizers
        saved = state["optimizers"] if "optimizers" in state else {"main": state.get("optimizer")}
        if set(saved) != set(opts) or any(v is None for v in saved.values()):
            raise UserError(f"checkpoint {self.ckpt_path} holds optimisers {', '.join(sorted(saved))}, this method has "
                            f"{', '.join(sorted(opts))}; use --force to start over")
        for k, o in opts.items():
            o.load_state_dict(saved[k])

    def _read_state(self, path: Path, keys: tuple[str, ...]) -> dict:
        """A checkpoint of ours: tensors and plain data only (``weights_only=True``: a file whose
        unpickling would run code, or anything else that is not ours, is refused, never run)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # UnpicklingError for foreign objects, RuntimeError / EOFError for damage
            detail = " ".join(str(e).split())[:120]
            raise UserError(f"{path} is not a bench checkpoint or is corrupt ({type(e).__name__}: {detail}); "
                            f"delete the run folder or run with --force")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise UserError(f"{path} is not a bench checkpoint (it lacks {', '.join(keys)}); delete the run folder or run with --force")
        return state

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        state = self._read_state(self.ckpt_path, ("step", "modules", "scaler", "method_state", "best", "timing"))
        try:
            for k, m in self.method.modules().items():
                m.load_state_dict(state["modules"][k])
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[1 if str(e).count("\n") else 0].strip()
            raise UserError(f"checkpoint {self.ckpt_path} does not fit this model ({first}); was it trained with "
                            f"another --text-encoder or width? use --force to start over")
        self._load_optimizer_state(state)
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_running_state(state["method_state"])
        self.best = state["best"]
        self.step = int(state["step"])
        self.step_times = list(state["timing"]["step"])
        self.data_times = list(state["timing"]["data"])
        self.train_wall = float(state["timing"]["wall"])
        self._truncate_log(self.step)
        return True

    def _truncate_log(self, step: int) -> None:
        path = self.dir / "log.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) < step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with (self.dir / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training -------------------------------------------------------------------------
    def fit(self) -> None:
        t, spec = self.t, self.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:  # temp files of a write killed midway (this process holds the run's claim)
            for tmp in self.dir.glob(".*.tmp"):
                if not tmp.name.startswith(".claim"):
                    tmp.unlink(missing_ok=True)
        resumed = self.load_checkpoint()
        if self.step >= t.iterations:
            return
        sampler = TwoStreamSampler(self.labeled, self.unlabeled, t.patch, t.labeled_bs, t.unlabeled_bs, spec.seed, t.flip,
                                   rank=self.rank, world=self.world)
        stop = t.iterations if spec.stop_after is None else min(t.iterations, self.step + spec.stop_after)
        loader = Prefetcher(sampler, self.step, stop, self.device)
        bar = None
        if spec.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=t.iterations,
                initial=self.step,
                desc=f"{spec.method_name} seed {spec.seed}" + (" (resumed)" if resumed else ""),
                unit="it",
                dynamic_ncols=True,
                leave=False,
            )
        self.method.train(True)
        self.last_good = self.step
        # Ctrl-C / SIGINT: finish the step in flight, save a checkpoint, then stop (exit 130)
        interrupted = []
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            while self.step < stop:
                step = self.step
                lrs = self.train_step.set_lr(step)
                torch.manual_seed(_step_seed(spec.seed, step))
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
                if bar is not None:
                    bar.set_postfix(loss=f"{float(losses.total.detach()):.3f}", refresh=False)
                    bar.update(1)
                if self.rank == 0 and t.val_every > 0 and self.spec.split.eval and (self.step % t.val_every == 0 or self.step == t.iterations):
                    self.validate()
                if self.step % t.ckpt_every == 0 or self.step == t.iterations or self.step == stop or interrupted:
                    self.save_checkpoint()
                    self.last_good = self.step
                if interrupted:
                    raise KeyboardInterrupt
            if self.world > 1:
                distributed.check_in_sync(self.method.parameters())
        finally:
            if handler is not None:
                signal.signal(signal.SIGINT, handler)
            loader.close()
            if bar is not None:
                bar.close()

    def _check_finite(self, losses, step: int) -> None:
        if torch.isfinite(losses.total.detach()).all():
            return
        bad = [k for k, v in losses.parts.items() if torch.is_tensor(v) and not torch.isfinite(v.detach()).all()]
        part = ", ".join(bad) if bad else "total"
        kept = (f"the last good checkpoint (step {self.last_good}) is kept in {self.dir}" if self.ckpt_path.exists()
                else "no checkpoint had been written yet")
        raise NonFiniteLoss(
            f"{self.spec.method_name}: loss is not finite at step {step} (part: {part}); {kept}; check the inputs "
            f"(text priors, images), lower the learning rate (--set lr=...) or enable --set grad_clip=1"
        )

    # -- evaluation -----------------------------------------------------------------------
    def _predict_case(self, image: np.ndarray, overlap) -> np.ndarray:
        return predict_volume(
            self.method.predict,
            image,
            self.t.patch,
            overlap,
            self.device,
            mode=self.spec.protocol.sw_mode,
            sw_batch_size=self.t.sw_batch_size,
            amp=self.use_amp,
            fusion=self.spec.protocol.fusion,
        )

    def validate(self) -> float:
        ds = self.spec.dataset
        self.method.train(False)
        scores = []
        for cid in self.spec.split.eval:
            pred = self._predict_case(self._image(cid), self.t.val_overlap)
            per = case_metrics(pred, self.eval_labels[cid], ds.spacing(cid), ds.num_classes, distances=False)
            scores.append(nanmean([v["dice"] for v in per.values()]))
        self.method.train(True)
        score = nanmean(scores)
        improved = score > self.best["score"] or self.best["step"] < 0
        if improved:
            self.best = {"score": score, "step": self.step}
            state = {"modules": {k: m.state_dict() for k, m in self.method.modules().items()},
                     "method_state": self.method.running_state(), "step": self.step}
            atomic_save(self.dir / "best.pt", lambda f: torch.save(state, f))
        self._log({"step": self.step - 1, "val_dice": score, "best": improved})
        if self.spec.on_validate is not None:
            self.spec.on_validate(self.step, score)
        return score

    def load_best(self) -> int:
        path = self.dir / "best.pt"
        if not path.exists():
            return self.step
        state = self._read_state(path, ("modules", "method_state", "step"))
        try:
            for k, m in self.method.modules().items():
                m.load_state_dict(state["modules"][k])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"{path} does not fit this model ({' '.join(str(e).split())[:120]}); delete the run folder or run with --force")
        self.method.load_running_state(state["method_state"])
        return int(state["step"])

    def test(self) -> MetricsRecord:
        ds, proto = self.spec.dataset, self.spec.protocol
        overlap = self.t.overlap if self.t.overlap >= 0 else proto.window_overlap(self.t.patch)
        used_step = self.load_best()
        self.method.train(False)
        reset_peak_memory(self.device)
        cases: dict[str, dict] = {}
        penalty: dict[str, float] = {}
        infer_times = []
        organs = list(ds.organs)
        cases_iter = self.spec.split.test
        if self.spec.progress:
            from tqdm.auto import tqdm

            cases_iter = tqdm(cases_iter, desc=f"{self.spec.method_name} test", unit="case", leave=False)
        for cid in cases_iter:
            image = self._image(cid)
            with StepTimer(self.device) as timer:
                pred = self._predict_case(image, overlap)
            infer_times.append(timer.seconds)
            gt = np.asarray(ds.load_label(cid))  # checked in __init__
            native = proto.to_native(pred, gt.shape)  # the source image's grid: what is saved and scored
            if self.spec.save_predictions:
                from datasets.nifti import write_nifti

                write_nifti(self.dir / "predictions" / f"{safe_name(cid, 'case id')}.nii.gz", native, ds.spacing(cid), ds.affine(cid))
            cases[cid] = score_case(native, gt, ds.spacing(cid), proto, organs)
            penalty[cid] = penalty_distance(gt.shape, ds.spacing(cid), proto)
        metrics = MetricsRecord.build(
            method=self.spec.method_name,
            dataset=ds.name,
            protocol=proto,
            split=self.spec.split.name,
            labeled_fraction=self.spec.split.labeled_fraction,
            seed=self.spec.seed,
            **self.spec.priors_names,
            organs=organs,
            # the imbalance the run was trained under (reports order organs by it)
            labeled_voxel_share=_share(self.ctx.labeled_voxel_counts, organs),
            checkpoint_step=used_step,
            val_dice=None if self.best["step"] < 0 else self.best["score"],
            cases=cases,
            penalty_distance=penalty,
        )
        timing = TimingRecord(
            device=device_description(self.device),
            train_s_per_iter=summarize_times(self.step_times),
            data_wait_share=float(sum(self.data_times) / max(sum(self.data_times) + sum(self.step_times), 1e-12)),
            infer_s_per_case=summarize_times(infer_times),
            train_wall_s=self.train_wall,
            iterations=self.t.iterations,
            timing_warmup=self.t.timing_warmup,
            amp=self.use_amp,
            threads=current_threads(),
            **peak_memory(self.device),
        )
        write_record(self.dir / "timing.json", timing)
        write_record(self.dir / "metrics.json", metrics)  # last: marks the run finished
        return metrics


def _share(counts, organs) -> dict[str, float]:
    fg = np.asarray(counts, dtype=np.float64)[1:]
    total = max(float(fg.sum()), 1.0)
    return {o: float(v / total) for o, v in zip(organs, fg)}


def _checked_label(ds: Dataset, case_id: str) -> np.ndarray:
    lab = np.asarray(ds.load_label(case_id))
    hi = int(lab.max()) if lab.size else 0
    if hi >= ds.num_classes or (lab.dtype.kind == "i" and int(lab.min()) < 0):
        raise UserError(
            f"label of case '{case_id}' holds value {hi} but dataset '{ds.name}' has classes 0..{ds.num_classes - 1}; "
            f"fix the label file or the dataset's label list"
        )
    return lab


def run_one(spec: RunSpec) -> MetricsRecord | None:
    """Train (or resume), then test on the split's test cases; writes the run folder."""
    trainer = Trainer(spec)  # loads and checks all data first: bad input leaves nothing behind
    if trainer.rank == 0:
        write_record(spec.run_dir / "config.json", ConfigRecord.from_dict({**spec.config, "world_size": trainer.world}))
    trainer.fit()
    if trainer.step < spec.train.iterations or trainer.rank != 0:
        return None
    return trainer.test()

