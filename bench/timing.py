"""Timing and memory measurement: CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def _vm_hwm_mb() -> float | None:
    """The process' resident-set high-water mark (``VmHWM`` of /proc/self/status) in MiB; None
    where there is no /proc (macOS, Windows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _release_freed_heap() -> None:
    """Hand memory that earlier runs freed back to the OS (glibc ``malloc_trim(0)``), so the RSS
    a new peak starts from is what is still in use, not what the allocator kept. A no-op where
    the C library has no malloc_trim (musl, macOS)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's peak on GPUs; on Linux CPUs the process' RSS
    high-water mark (writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS, after
    freed heap memory went back to the OS), so several runs in one process each report their
    own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _release_freed_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # no /proc, or not allowed: peak_memory falls back to the process' lifetime peak
        pass


def peak_memory(device: torch.device) -> dict:
    """Peak memory in MiB since :func:`reset_peak_memory`: the CUDA allocator's peak on GPUs
    (``cuda_allocator``), the RSS high-water mark on Linux CPUs (``process_rss_since_reset``),
    else the process' lifetime peak RSS (``process_rss``: other runs of the process included)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda_allocator"}
    hwm = _vm_hwm_mb()
    if hwm is not None:
        return {"peak_memory_mb": float(hwm), "peak_memory_kind": "process_rss_since_reset"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return {"peak_memory_mb": float(mb), "peak_memory_kind": "process_rss"}


def device_description(device: torch.device) -> str:
    """The device as timing.json names it (GPU model and CUDA version, or CPU and threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
