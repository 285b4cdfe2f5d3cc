"""Multi-process training with PyTorch's own runtime (``torchrun``), no scheduler of ours.

``torchrun --nproc_per_node=N -m bench run ...`` starts N processes; each trains the same run
on its slice of every global batch (the batch of step t is drawn from (seed, t) as in a single
process and rank r keeps images ``r::N``-contiguous slices), gradients are averaged across
processes, and only rank 0 writes files (checkpoints, logs, metrics). Backend: NCCL on GPUs,
gloo on CPUs.

Two ways to average gradients (``--set ddp=auto|off``, execution only: equal up to floating
point, tests/test_ddp.py):

* **DistributedDataParallel** (``ddp="auto"``, for methods that declare ``ddp_compatible``: see
  :func:`ddp_compatible`): :class:`DDPNetworks` wraps each trained network (never a teacher) and
  :class:`bench.step.TrainStep` runs the method's ``training_step`` with the wrappers swapped
  into ``method.networks`` (:meth:`DDPNetworks.forward`), so ``self.networks[k](x)`` runs DDP's
  forward and the gradients are all-reduced in buckets while backward still runs. Outside that
  step (optimisers, EMA teachers, checkpoints, validation, ``predict``) the method holds and
  saves its plain networks: state_dict keys, parameter names and objects never change.
* **the hand-written average** (:func:`average_gradients`, the reference; ``ddp="off"`` and every
  method not declared compatible, e.g. those with ``manual_optimization``): one ``all_reduce``
  of all gradients after backward, which works whatever a method calls inside its networks.

``--set sync_bn=true`` converts the trained networks' BatchNorm layers to ``SyncBatchNorm``
(:func:`convert_sync_batchnorm`; statistics of the global batch; CUDA only), on either path.

Multi-node: ``torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d
--rdzv_endpoint=HOST:29400 --rdzv_id=JOB -m bench run ...`` on every node; the results
directory must be shared (rank 0 writes).

Results equal a single process up to floating point for losses that are means over images;
losses that pool over the batch (soft Dice summed over the batch, BatchNorm statistics) see
each rank's slice only, so distributed results differ slightly (measured in the tests).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from bench.core.errors import UserError


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


# -- DistributedDataParallel ---------------------------------------------------------------
def ddp_compatible(method_cls: type) -> bool:
    """Whether ``method_cls`` may train under DistributedDataParallel: it declares
    ``ddp_compatible`` (``methods.base.Method``), the declaration covers the ``training_step`` it
    runs (declared by the class that defines ``training_step`` or by a subclass of it: a
    subclass that overrides ``training_step`` and does not declare again is not covered) and it
    runs no backward pass of its own (``manual_optimization``)."""
    if getattr(method_cls, "manual_optimization", False):
        return False
    declarer = next((c for c in method_cls.__mro__ if "ddp_compatible" in vars(c)), None)
    definer = next((c for c in method_cls.__mro__ if "training_step" in vars(c)), None)
    return bool(declarer is not None and vars(declarer)["ddp_compatible"] and definer is not None and issubclass(declarer, definer))


def use_ddp(method_cls: type, setting: str = "auto") -> bool:
    """Whether a run of ``method_cls`` with ``--set ddp=setting`` ("auto" | "off") trains under
    DistributedDataParallel: several processes, "auto" and a compatible method."""
    if setting not in ("auto", "off"):
        raise ValueError(f"ddp must be 'auto' or 'off', not {setting!r}")
    return setting == "auto" and active() and ddp_compatible(method_cls)


class DDPNetworks:
    """The trained networks of ``method`` (``method.networks``, never its teachers) wrapped in
    ``DistributedDataParallel``, swapped into ``method.networks`` only while
    :meth:`forward` is open (the method's ``training_step``).

    Why the swap rather than a lasting wrapper: DDP all-reduces a network's gradients only when
    its own ``forward`` ran (it prepares the reducer there); the method keeps and saves the plain
    module, so checkpoints, EMA by parameter name, goldens and ``predict`` see the same keys and
    objects on both paths, and a method that calls anything but ``forward`` on a wrapped network
    during the step fails with an AttributeError instead of silently skipping the averaging.
    After each step :meth:`check_called` makes sure every wrapped network ran through DDP's
    forward with gradients (a method holding its network elsewhere than in the dict would bypass
    the wrapper and leave its gradients unaveraged).

    ``forward_sync_buffers=False``: each process keeps its own BatchNorm running statistics, as
    on the reference path (rank 0's are the ones saved; train-mode outputs use batch statistics);
    buffers are synced once, when wrapping (the weights are rank 0's already, broadcast_modules).

    Args:
        method: the method (``methods.base.Method``), on ``device``, its weights equal on every rank.
        device: this rank's device (``cuda:i`` or cpu).
    """

    def __init__(self, method, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.method = method
        self.wrapped: dict[str, nn.Module] = {}
        self.calls: dict[str, int] = {}
        for name, net in method.networks.items():
            if not any(p.requires_grad for p in net.parameters()):
                continue  # nothing to average (DDP refuses such a module)
            ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                          forward_sync_buffers=False)
            ddp.register_forward_pre_hook(self._counter(name))
            self.wrapped[name] = ddp
        #: the parameters whose gradients DDP averages (the hand-written average skips them)
        self.param_ids = {id(p) for ddp in self.wrapped.values() for p in ddp.module.parameters() if p.requires_grad}

    def _counter(self, name: str):
        def hook(module, args):
            if torch.is_grad_enabled():
                self.calls[name] += 1
        return hook

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Within: ``method.networks[k]`` is the DDP wrapper of network k; after: the plain network again."""
        nets = self.method.networks
        plain = {k: nets[k] for k in self.wrapped}
        self.calls = {k: 0 for k in self.wrapped}
        nets.update(self.wrapped)
        try:
            yield
        finally:
            nets.update(plain)

    def check_called(self) -> None:
        """Raise if a wrapped network did not run through DDP's forward with gradients in the
        step just taken (its gradients would not be averaged)."""
        missed = [k for k, n in self.calls.items() if n == 0]
        if missed:
            name = type(self.method).__name__
            raise RuntimeError(f"{name} declares ddp_compatible, but its training step did not call network(s) "
                               f"{', '.join(missed)} through method.networks[k](x): their gradients would not be averaged; "
                               f"run with --set ddp=off or remove the declaration")

    def uncovered(self, params) -> list:
        """The parameters of ``params`` whose gradients DDP does not average."""
        return [p for p in params if id(p) not in self.param_ids]


def wrap_networks(method, device: torch.device, setting: str = "auto") -> DDPNetworks | None:
    """:class:`DDPNetworks` of ``method`` where :func:`use_ddp` says so, else None (the
    hand-written average)."""
    return DDPNetworks(method, device) if use_ddp(type(method), setting) else None


def convert_sync_batchnorm(method, device: torch.device) -> int:
    """Turn the BatchNorm layers of the trained networks (``method.networks``; teachers keep
    theirs) into ``torch.nn.SyncBatchNorm`` in place: same parameter objects, same state_dict keys.
    A no-op in a single process. Returns the number of layers converted. Call before the
    networks are wrapped (:func:`wrap_networks`).

    Raises:
        UserError: on CPU (PyTorch's SyncBatchNorm runs on GPUs only).
    """
    if not active():
        return 0
    if device.type != "cuda":
        raise UserError("sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only); on CPU processes use --set sync_bn=false")
    before = 0
    for name, net in list(method.networks.items()):
        before += sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm) for m in net.modules())
        method.networks[name] = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return before
