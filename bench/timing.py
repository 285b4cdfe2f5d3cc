"""Timing and memory measurement: CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

import platform
import resource
import sys
import time

import numpy as np
import torch


class StepTimer:
    """Times a region; on CUDA with events (so GPU work is measured, not the launch)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "StepTimer":
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def summarize_times(values: list[float]) -> dict:
    """Median, p90, mean and count of step times (None where there are none)."""
    if not values:
        return {"median": None, "p90": None, "mean": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()), "n": int(a.size)}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak of CUDA allocator memory (no-op on CPUs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory in MiB: CUDA allocator peak on GPU, else the process' peak RSS."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda_allocator"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return {"peak_memory_mb": float(mb), "peak_memory_kind": "process_rss"}


def device_description(device: torch.device) -> str:
    """The device as timing.json names it (GPU model and CUDA version, or CPU and threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
