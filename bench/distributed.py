"""Multi-process training with PyTorch's own runtime (``torchrun``), no scheduler of ours.

``torchrun --nproc_per_node=N -m bench run ...`` starts N processes; each trains the same run
on its slice of every global batch (the batch of step t is drawn from (seed, t) as in a single
process and rank r keeps images ``r::N``-contiguous slices), gradients are averaged across
processes with ``all_reduce`` after each backward pass (what DistributedDataParallel does,
without wrapping the methods' networks, so every method works unchanged), and only rank 0
writes files (checkpoints, logs, metrics). Backend: NCCL on GPUs, gloo on CPUs.

Multi-node: ``torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d
--rdzv_endpoint=HOST:29400 --rdzv_id=JOB -m bench run ...`` on every node; the results
directory must be shared (rank 0 writes).

Results equal a single process up to floating point for losses that are means over images;
losses that pool over the batch (soft Dice summed over the batch, BatchNorm statistics) see
each rank's slice only, so distributed results differ slightly (measured in the tests).
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    """Processes of this run (torchrun's ``WORLD_SIZE``; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process' rank (torchrun's ``RANK``; 0 alone)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes results (rank 0)."""
    return rank() == 0


def active() -> bool:
    """Whether a process group of more than one process is initialised."""
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes (no-op for one process). Returns the device
    of this rank (``cuda:LOCAL_RANK`` on GPUs) or None when not distributed."""
    if world_size() <= 1:
        return None
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def average_gradients(params) -> None:
    """All-reduce (sum) then divide: every rank ends with the mean gradient."""
    if not active():
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_modules(modules) -> None:
    """Rank 0's weights and buffers to every rank (identical start even if inits differ)."""
    if not active():
        return
    import torch.distributed as dist

    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


def agree(value: bool) -> bool:
    """Rank 0's decision, for every rank."""
    if not active():
        return value
    import torch.distributed as dist

    obj = [value]
    dist.broadcast_object_list(obj, src=0)
    return bool(obj[0])


def shutdown() -> None:
    """Leave the process group (no-op for one process)."""
    if active():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if active():
        torch.distributed.barrier()


def check_in_sync(params) -> float:
    """Raise if the ranks' weights differ (they must stay identical: same start, same averaged
    gradients). Returns the largest difference of the per-rank weight checksums."""
    if not active():
        return 0.0
    import torch.distributed as dist

    local = torch.tensor([float(sum(p.detach().double().sum() for p in params))], dtype=torch.float64)
    gathered = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    values = torch.cat(gathered)
    spread = float(values.max() - values.min())
    if spread > 1e-6 * max(1.0, float(values.abs().max())):
        raise RuntimeError(f"distributed ranks diverged: weight checksums {values.tolist()}")
    return spread
