"""DistributedDataParallel beside the hand-written gradient average (bench/distributed.py,
bench/step.py): two gloo processes on CPU train a method with a teacher (mean_teacher) and one
with two students (cps) from the same start on the same batches, once on each path; the
weights (networks and teachers, every rank) agree within float tolerance, the ranks stay in
sync, teachers are never wrapped and the method keeps its plain networks (state_dict keys
unchanged). A method that reaches its network other than through ``forward`` fails loudly."""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bench import distributed
from bench.core.errors import UserError
from bench.core.plan import TrainConfig
from bench.step import TrainStep, make_optimizers
from methods.base import Losses, Method
from tests.helpers import random_batch, tiny_context

STEPS = 4
WORLD = 2
#: float tolerance of "equal": DDP divides each gradient by the world size before its bucketed
#: all_reduce, the reference after its flat one (exact for 2 processes, but not promised)
TOL = 1e-5


def _state(method) -> dict[str, torch.Tensor]:
    """Every saved tensor of the method (trained networks and teachers), by its saved key."""
    return {f"{k}.{n}": t.detach().clone() for k, m in method.modules().items() for n, t in m.state_dict().items()}


def _train(method, mode: str, rank: int) -> tuple[dict, list[str]]:
    """``STEPS`` steps of ``method`` on rank ``rank``'s half of fixed global batches, with
    ``ddp=mode``; returns the weights and the names of the networks DDP wrapped."""
    cpu = torch.device("cpu")
    train = TrainConfig(lr=0.1, iterations=STEPS, **type(method).train_defaults)
    ddp = distributed.wrap_networks(method, cpu, mode)
    averaged: list[int] = []

    def average(params):  # the hand-written average, counting what it is given
        averaged.append(len(params))
        distributed.average_gradients(params)

    ts = TrainStep(method, make_optimizers(method, train), cpu, amp=False, average=average, ddp=ddp)
    method.train(True)
    for step in range(STEPS):
        ts.set_lr(step)
        torch.manual_seed(1000 + step)  # the step's random state, equal on every rank (as bench.train)
        labeled, unlabeled = random_batch(method.ctx, 2 * WORLD, 2 * WORLD, seed=step)
        mine = slice(2 * rank, 2 * rank + 2)
        ts({k: v[mine] for k, v in labeled.items()}, {k: v[mine] for k, v in unlabeled.items()}, step)
    assert all(not isinstance(n, nn.parallel.DistributedDataParallel) for n in method.modules().values())
    distributed.check_in_sync(method.parameters())  # raises if the ranks' weights differ
    # DDP averaged every gradient already: the hand-written average got nothing (no double work)
    assert averaged == ([len(method.parameters())] * STEPS if ddp is None else []), averaged
    return _state(method), sorted(ddp.wrapped) if ddp is not None else []


def _compare(name: str, rank: int) -> dict:
    from bench.core.registry import METHODS

    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(tiny_context(num_classes=4))
    distributed.broadcast_modules(method.modules().values())
    start = _state(method)
    ref, ref_wrapped = _train(copy.deepcopy(method), "off", rank)
    ddp, ddp_wrapped = _train(copy.deepcopy(method), "auto", rank)
    assert ref.keys() == ddp.keys() == start.keys()  # no "module." prefix anywhere
    diff = max(float((ref[k].double() - ddp[k].double()).abs().max()) for k in ref)
    moved = max(float((ref[k] - start[k]).abs().max()) for k in ref if ref[k].is_floating_point())
    return {"max_abs_diff": diff, "moved": moved, "ref_wrapped": ref_wrapped, "ddp_wrapped": ddp_wrapped,
            "networks": sorted(method.networks), "teachers": sorted(method.teachers)}


class _Net(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv3d(1, classes, 1)

    def forward(self, x):
        return self.conv(x)


class _HeldElsewhere(Method):
    """Declares ddp_compatible but calls its network through an attribute, bypassing the swap."""

    ddp_compatible = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.networks["net"] = self.net = _Net(ctx.num_classes)

    def training_step(self, labeled, unlabeled, step):
        loss = nn.functional.cross_entropy(self.net(labeled["image"]), labeled["label"])
        return Losses(loss, {})


class _CallsSubmodule(_HeldElsewhere):
    """Declares ddp_compatible but calls a submodule of its network (not ``forward``)."""

    ddp_compatible = True

    def training_step(self, labeled, unlabeled, step):
        loss = nn.functional.cross_entropy(self.networks["net"].conv(labeled["image"]), labeled["label"])
        return Losses(loss, {})


def _guards(rank: int) -> dict:
    ctx = tiny_context(num_classes=3, patch=(16, 16, 16))
    out = {}
    for cls in (_HeldElsewhere, _CallsSubmodule):
        m = cls(ctx)
        ddp = distributed.wrap_networks(m, torch.device("cpu"))
        ts = TrainStep(m, make_optimizers(m, TrainConfig(iterations=2)), torch.device("cpu"), amp=False,
                       average=distributed.average_gradients, ddp=ddp)
        try:
            ts(*random_batch(ctx, 1, 0, seed=rank), 0)
            out[cls.__name__] = "no error"
        except (RuntimeError, AttributeError) as e:
            out[cls.__name__] = f"{type(e).__name__}: {e}"
    try:
        distributed.convert_sync_batchnorm(_HeldElsewhere(ctx), torch.device("cpu"))
        out["sync_bn_cpu"] = "no error"
    except UserError as e:
        out["sync_bn_cpu"] = str(e)
    # the conversion itself (its forward needs CUDA): trained networks only, same parameter
    # objects (the optimiser's), same saved keys
    from bench.core.registry import METHODS

    m = METHODS.get("mean_teacher")(tiny_context(num_classes=4))
    keys, params = _state(m).keys(), [id(p) for p in m.parameters()]
    out["sync_bn_converted"] = distributed.convert_sync_batchnorm(m, torch.device("cuda", 0))
    kinds = {k: sorted({type(x).__name__ for x in net.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)})
             for k, net in m.modules().items()}
    out["sync_bn_kinds"] = kinds
    out["sync_bn_same"] = _state(m).keys() == keys and [id(p) for p in m.parameters()] == params
    return out


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        result = {name: _compare(name, rank) for name in ("mean_teacher", "cps")}
        result["guards"] = _guards(rank)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_equals_the_hand_written_average_on_two_gloo_processes(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    results = [json.loads(open(f"{out}.{r}").read()) for r in range(WORLD)]
    for rank, res in enumerate(results):
        for name in ("mean_teacher", "cps"):
            r = res[name]
            print(f"rank {rank} {name}: DDP vs reference max |diff| {r['max_abs_diff']:.3g} after {STEPS} steps "
                  f"(weights moved up to {r['moved']:.3g})")
            assert r["ref_wrapped"] == [] and r["ddp_wrapped"] == r["networks"]  # teachers never wrapped
            assert r["moved"] > 1e-3, "training moved the weights (the comparison means something)"
            assert r["max_abs_diff"] <= TOL
        assert results[rank]["mean_teacher"]["teachers"] == ["teacher"] and results[rank]["cps"]["networks"] == ["A", "B"]
        g = res["guards"]
        assert g["_HeldElsewhere"].startswith("RuntimeError") and "did not call network(s) net" in g["_HeldElsewhere"]
        assert g["_CallsSubmodule"].startswith("AttributeError") and "conv" in g["_CallsSubmodule"]
        assert "sync_bn needs CUDA" in g["sync_bn_cpu"]
        assert g["sync_bn_converted"] > 0 and g["sync_bn_same"]
        assert g["sync_bn_kinds"] == {"net": ["SyncBatchNorm"], "teacher": ["BatchNorm3d"]}


# -- one process: who runs under DDP, what enters the run's identity -------------------------
def test_which_methods_may_run_under_ddp():
    from bench.core.registry import METHODS

    assert all(distributed.ddp_compatible(METHODS.get(n)) for n in ("mean_teacher", "ua_mt", "acisis", "cps", "dhc", "depl", "supervised"))
    # dst overrides CoTraining's training_step (heads(x, c)) and does not declare; co_bionet and
    # desco run their own backward passes; magicnet and tak call encode / decode
    assert not any(distributed.ddp_compatible(METHODS.get(n)) for n in ("dst", "co_bionet", "desco", "magicnet", "tak", "ss_net"))

    class Overrides(METHODS.get("cps")):
        def training_step(self, labeled, unlabeled, step):
            return super().training_step(labeled, unlabeled, step)

    class Declares(Overrides):
        ddp_compatible = True

    class Manual(Declares):
        manual_optimization = True

    assert not distributed.ddp_compatible(Overrides) and distributed.ddp_compatible(Declares)
    assert not distributed.ddp_compatible(Manual)
    assert not distributed.use_ddp(METHODS.get("cps"), "auto")  # one process: nothing to average
    with pytest.raises(ValueError):
        distributed.use_ddp(METHODS.get("cps"), "on")
    with pytest.raises(ValueError, match="manual_optimization"):
        TrainStep(Manual(tiny_context(num_classes=3)), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                  torch.device("cpu"), amp=False, ddp=object())


def test_ddp_is_execution_only_and_sync_bn_enters_the_hash_only_where_it_acts(tmp_path):
    from bench.runner import RunRequest, resolve
    from datasets.splits import Split

    split = Split("s", ["a"], ["b"], ["c"], ["d"])

    def plan(sets, world=1):
        (p,) = resolve(RunRequest.build({"preset": "tiny", "methods": "cps"}, list(sets)))
        import dataclasses

        return dataclasses.replace(p, world_size=world).bound(split.name, split.digest(), tmp_path)

    base = plan([])
    assert base.train.ddp == "auto" and base.train.sync_bn is False
    assert plan(["ddp=off"]).hash == base.hash and plan(["ddp=off"]).execution()["ddp"] == "off"
    assert "ddp" not in base.identity()["train"] and "sync_bn" not in base.identity()["train"]
    assert plan(["sync_bn=true"]).hash == base.hash  # one process: no-op, same run
    two, two_sync = plan([], world=2), plan(["sync_bn=true"], world=2)
    assert two_sync.hash != two.hash and two_sync.identity()["train"]["sync_bn"] is True
    with pytest.raises(UserError, match="ddp"):
        plan(["ddp=always"])


# -- end to end: torchrun -m bench run, DDP vs the reference ---------------------------------
@pytest.mark.slow  # ~35 s: two torchrun runs of two methods
def test_torchrun_bench_run_ddp_equals_the_reference(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    # DDP's C++ logger says "DDP Initialized with" once per wrapped network and rank
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "INFO"}
    weights, wrapped = {}, {}
    for mode in ("off", "auto"):
        r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "bench", "run", "--methods", "mean_teacher,cps",
                            "--preset", "tiny", "--iterations", "4", "--no-progress", "--set", f"ddp={mode}", "--out", str(tmp_path / mode)],
                           cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        wrapped[mode] = (r.stdout + r.stderr).count("DDP Initialized with")
        weights[mode] = {ck.relative_to(tmp_path / mode).parts[-4]: torch.load(ck, map_location="cpu", weights_only=False)["modules"]
                         for ck in (tmp_path / mode).rglob("checkpoint.pt")}
    assert wrapped == {"off": 0, "auto": 2 * 3}  # 2 ranks x (mean_teacher's student, cps' A and B)
    assert sorted(weights["auto"]) == sorted(weights["off"]) == ["cps", "mean_teacher"]
    for method, modules in weights["off"].items():
        other = weights["auto"][method]
        assert modules.keys() == other.keys()
        for k, state in modules.items():
            assert state.keys() == other[k].keys()  # plain keys: no "module." prefix
            diff = max(float((v.double() - other[k][n].double()).abs().max()) for n, v in state.items())
            print(f"{method}.{k}: torchrun DDP vs reference max |diff| {diff:.3g}")
            assert diff <= TOL
