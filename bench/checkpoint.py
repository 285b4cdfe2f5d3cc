"""What a run folder keeps between processes: ``checkpoint.pt`` (the latest state, resumable),
``best.pt`` (the weights of the best validation Dice, used for the test) and ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench import lock
from bench.core.errors import UserError
from bench.core.store import atomic_save, atomic_write_text

#: what a resumable checkpoint holds besides its optimiser state
CHECKPOINT_KEYS = ("step", "modules", "scaler", "method_state", "best", "timing")


#: what a run folder holds; none of them may be a symbolic link (a write would land where it points)
RUN_FILES = ("config.json", "metrics.json", "timing.json", "log.jsonl", "checkpoint.pt", "best.pt", "predictions")


def refuse_links(run_dir: Path) -> None:
    """Refuse a run folder (or one of its files) that is a symbolic link: a planted link would
    make the run write or append outside ``--out``.

    Raises:
        UserError: naming the link.
    """
    for p in [Path(run_dir), *(Path(run_dir) / n for n in RUN_FILES)]:
        if p.is_symlink():
            raise UserError(f"{p} is a symbolic link; a run folder holds no links (a write would land where it points): "
                            f"remove it and run again")


class Checkpointer:
    """Saves and restores one run's state; only rank 0 writes.

    Owns the file formats: tensors and plain data only, read with ``weights_only=True`` (a file
    whose unpickling would run code is refused, never run); the default single optimiser is
    stored as ``optimizer`` (every earlier checkpoint's layout), a method's named optimisers as
    ``optimizers``; the log is truncated to a resumed checkpoint's step.

    Args:
        run_dir: the run folder.
        device: where tensors are loaded.
        rank: this process' rank (others neither write nor log).
    """

    def __init__(self, run_dir: Path, device: torch.device, rank: int = 0):
        self.dir, self.device, self.rank = Path(run_dir), device, rank
        self.path, self.best_path, self.log_path = self.dir / "checkpoint.pt", self.dir / "best.pt", self.dir / "log.jsonl"
        refuse_links(self.dir)

    def clean_temp(self) -> None:
        """Remove temporary files of a write killed midway (this process holds the run's claim):
        the run folder's and predictions/' own, and claim temporaries a minute old (a live
        worker's claim temporaries exist for milliseconds)."""
        if self.rank != 0:
            return
        import time

        for tmp in [*self.dir.glob(".*.tmp"), *(self.dir / "predictions").glob(".*.tmp"), *self.dir.glob(".claim.dead.*")]:
            if tmp.is_symlink() or not tmp.is_file():
                continue
            if tmp.name.startswith(".claim"):
                try:
                    if time.time() - tmp.lstat().st_mtime < 60:
                        continue
                except FileNotFoundError:
                    continue
            tmp.unlink(missing_ok=True)

    def save(self, step: int, method, train_step, best: dict, timing: dict) -> None:
        """Write the latest state (atomically) and refresh the run's claim."""
        if self.rank != 0:
            return
        opts = train_step.optimizers
        optim = ({"optimizer": opts["main"].state_dict()} if list(opts) == ["main"]
                 else {"optimizers": {k: o.state_dict() for k, o in opts.items()}})
        state = {"step": step, "modules": {k: m.state_dict() for k, m in method.modules().items()}, **optim,
                 "scaler": train_step.scaler.state_dict(), "method_state": method.running_state(), "best": best, "timing": timing}
        atomic_save(self.path, lambda f: torch.save(state, f))
        lock.touch(self.dir)  # a live claim stays fresh

    def read(self, path: Path, keys: tuple[str, ...]) -> dict:
        """A checkpoint of ours holding ``keys``.

        Raises:
            UserError: not a bench checkpoint, or damaged.
        """
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # UnpicklingError for foreign objects, RuntimeError / EOFError for damage
            detail = " ".join(str(e).split())[:120]
            raise UserError(f"{path} is not a bench checkpoint or is corrupt ({type(e).__name__}: {detail}); "
                            f"delete the run folder or run with --force")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise UserError(f"{path} is not a bench checkpoint (it lacks {', '.join(keys)}); delete the run folder or run with --force")
        return state

    def load(self, method, train_step) -> dict | None:
        """Restore the latest state into ``method`` and ``train_step``; returns the checkpoint's
        ``step``, ``best`` and ``timing`` (None without a checkpoint) and truncates the log to it.

        Raises:
            UserError: a checkpoint that is not ours or does not fit this model or its optimisers.
        """
        if not self.path.exists():
            return None
        state = self.read(self.path, CHECKPOINT_KEYS)
        try:
            for k, m in method.modules().items():
                m.load_state_dict(state["modules"][k])
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[1 if str(e).count("\n") else 0].strip()
            raise UserError(f"checkpoint {self.path} does not fit this model ({first}); was it trained with "
                            f"another --text-encoder or width? use --force to start over")
        opts = train_step.optimizers
        saved = state["optimizers"] if "optimizers" in state else {"main": state.get("optimizer")}
        if set(saved) != set(opts) or any(v is None for v in saved.values()):
            raise UserError(f"checkpoint {self.path} holds optimisers {', '.join(sorted(saved))}, this method has "
                            f"{', '.join(sorted(opts))}; use --force to start over")
        for k, o in opts.items():
            o.load_state_dict(saved[k])
        train_step.scaler.load_state_dict(state["scaler"])
        method.load_running_state(state["method_state"])
        self.truncate_log(int(state["step"]))
        return {"step": int(state["step"]), "best": state["best"], "timing": state["timing"]}

    def save_best(self, method, step: int) -> None:
        """Keep ``method``'s weights as the best so far (validation at ``step``)."""
        state = {"modules": {k: m.state_dict() for k, m in method.modules().items()},
                 "method_state": method.running_state(), "step": step}
        atomic_save(self.best_path, lambda f: torch.save(state, f))

    def load_best(self, method) -> int | None:
        """Load the best weights into ``method``; returns their step (None without best.pt).

        Raises:
            UserError: best.pt is not ours or does not fit this model.
        """
        if not self.best_path.exists():
            return None
        state = self.read(self.best_path, ("modules", "method_state", "step"))
        try:
            for k, m in method.modules().items():
                m.load_state_dict(state["modules"][k])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"{self.best_path} does not fit this model ({' '.join(str(e).split())[:120]}); delete the run folder or run with --force")
        method.load_running_state(state["method_state"])
        return int(state["step"])

    def log(self, record: dict) -> None:
        """Append one JSON line to log.jsonl (rank 0)."""
        if self.rank != 0:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Keep the log lines of steps before ``step`` (what a resumed run has not redone)."""
        if self.rank != 0 or not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) < step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(self.log_path, "".join(k + "\n" for k in keep))
