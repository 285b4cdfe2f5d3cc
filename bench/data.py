"""Two-stream patch sampling with a prefetching thread.

Each training step gets ``labeled_bs`` labeled patches (image + label) and
``unlabeled_bs`` unlabeled patches (image only: the sampler never holds labels of unlabeled
cases, so they cannot leak). Batches depend only on ``(seed, step)``, so a resumed run sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Sequence

import numpy as np
import torch


def _pad_to(a: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    pads = [(0, max(p - s, 0)) for s, p in zip(a.shape, patch)]
    if any(p[1] for p in pads):
        return np.pad(a, pads, mode="constant")
    return a


def random_crop(rng: np.random.Generator, arrays: Sequence[np.ndarray], patch: Sequence[int], flip: bool) -> list[np.ndarray]:
    """Same random crop (and random flips along H and W) of each (D, H, W) array."""
    arrays = [_pad_to(a, patch) for a in arrays]
    shape = arrays[0].shape
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)]
    box = tuple(slice(o, o + p) for o, p in zip(start, patch))
    out = [np.asarray(a[box]) for a in arrays]
    if flip:
        for axis in (1, 2):
            if rng.random() < 0.5:
                out = [np.flip(a, axis) for a in out]
    return [np.ascontiguousarray(a) for a in out]


class TwoStreamSampler:
    """Builds batch ``step`` from in-memory normalised volumes.

    Args:
        labeled: list of (image (D, H, W) float32, label (D, H, W) uint8).
        unlabeled: list of images (D, H, W) float32 - no labels.
    """

    def __init__(
        self,
        labeled: list[tuple[np.ndarray, np.ndarray]],
        unlabeled: list[np.ndarray],
        patch: Sequence[int],
        labeled_bs: int,
        unlabeled_bs: int,
        seed: int,
        flip: bool = True,
        rank: int = 0,
        world: int = 1,
    ):
        if not labeled:
            raise ValueError("no labeled cases")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.patch = tuple(patch)
        self.labeled_bs = labeled_bs
        self.unlabeled_bs = unlabeled_bs if unlabeled else 0
        self.seed = seed
        self.flip = flip
        self.rank, self.world = rank, world  # distributed: this rank keeps its slice of the global batch

    def batch(self, step: int) -> tuple[dict, dict | None]:
        rng = np.random.default_rng([self.seed, step])
        li = rng.choice(len(self.labeled), size=self.labeled_bs, replace=len(self.labeled) < self.labeled_bs)
        imgs, labs = [], []
        for i in li:
            img, lab = random_crop(rng, self.labeled[int(i)], self.patch, self.flip)
            imgs.append(img)
            labs.append(lab)
        mine = self._slice(len(imgs))
        labeled = {"image": torch.from_numpy(np.stack(imgs[mine])[:, None]), "label": torch.from_numpy(np.stack(labs[mine]).astype(np.int64))}
        if not self.unlabeled_bs:
            return labeled, None
        ui = rng.choice(len(self.unlabeled), size=self.unlabeled_bs, replace=len(self.unlabeled) < self.unlabeled_bs)
        uimgs = [random_crop(rng, [self.unlabeled[int(i)]], self.patch, self.flip)[0] for i in ui]
        return labeled, {"image": torch.from_numpy(np.stack(uimgs[self._slice(len(uimgs))])[:, None])}

    def _slice(self, n: int) -> slice:
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


class Prefetcher:
    """Produces batches for steps ``start..stop-1`` in a background thread.

    ``get()`` returns ``(labeled, unlabeled, wait_seconds)``; the wait is the time the training
    loop was blocked on data (the data-wait share of timing.json).
    """

    _DONE = object()

    def __init__(self, sampler: TwoStreamSampler, start: int, stop: int, device: torch.device, depth: int = 3):
        self.sampler = sampler
        self.device = device
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(start, stop), daemon=True)
        self.thread.start()

    def _work(self, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                if self._stop.is_set():
                    return
                lab, unl = self.sampler.batch(step)
                if self.device.type == "cuda":
                    lab = {k: v.pin_memory() for k, v in lab.items()}
                    unl = {k: v.pin_memory() for k, v in unl.items()} if unl else None
                while not self._stop.is_set():
                    try:
                        self.q.put((lab, unl), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in get()
            self.error = e
        finally:
            try:
                self.q.put(self._DONE, timeout=1)
            except queue.Full:
                pass

    def get(self) -> tuple[dict, dict | None, float]:
        t0 = time.perf_counter()
        item = self.q.get()
        if item is self._DONE:
            raise RuntimeError("data loader stopped") from self.error
        lab, unl = item
        nb = self.device.type == "cuda"
        lab = {k: v.to(self.device, non_blocking=nb) for k, v in lab.items()}
        unl = {k: v.to(self.device, non_blocking=nb) for k, v in unl.items()} if unl else None
        return lab, unl, time.perf_counter() - t0

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
