"""CUDA tests (``tox -e gpu`` / ``pytest -m gpu``): skipped without a CUDA device.

What must hold on a GPU beyond the CPU suite: training with AMP (bf16 where supported) gives
finite losses and a result; the same seed gives metrics within a documented tolerance (CUDA
kernels are not bit-reproducible: ``GPU_DICE_TOLERANCE``); TAK's chunk-free dynamic head gives
autograd's values and gradients; the timing variants run.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

#: same seed, same GPU: mean Dice of two runs may differ by at most this (non-deterministic
#: atomics in cuDNN backward kernels and bf16 rounding); CPU runs are exactly equal
GPU_DICE_TOLERANCE = 0.02


def _cuda_spec(dataset, method, run_dir, **train):
    spec = tiny_spec(dataset, method, run_dir, **train)
    spec.device = torch.device("cuda")
    return spec


@pytest.mark.parametrize("method", ["mean_teacher", "dhc"])
def test_amp_training_on_cuda(tiny_dataset, tmp_path, method):
    import json

    from bench.train import run_one

    metrics = run_one(_cuda_spec(tiny_dataset, method, tmp_path / "r"))
    assert 0.0 <= metrics.mean["dice"] <= 1.0
    timing = json.loads((tmp_path / "r" / "timing.json").read_text())
    assert timing["amp"] is True and timing["peak_memory_kind"] == "cuda_allocator"


def test_released_fp16_amp_uses_a_grad_scaler(tiny_dataset, tmp_path):
    """amp="fp16" (the released scripts' autocast): fp16 with a GradScaler; a run finishes."""
    from bench.step import TrainStep
    from bench.train import run_one

    sgd = torch.optim.SGD([torch.zeros(1, device="cuda", requires_grad=True)], lr=0.1)
    ts = TrainStep(None, sgd, torch.device("cuda"), amp="fp16")
    assert ts.dtype == torch.float16 and ts.scaler.is_enabled()
    assert not TrainStep(None, sgd, torch.device("cuda"), amp=True).scaler.is_enabled() or not torch.cuda.is_bf16_supported()
    metrics = run_one(_cuda_spec(tiny_dataset, "mean_teacher", tmp_path / "r", amp="fp16"))
    assert 0.0 <= metrics.mean["dice"] <= 1.0


def test_same_seed_within_tolerance_on_cuda(tiny_dataset, tmp_path):
    from bench.train import run_one

    a = run_one(_cuda_spec(tiny_dataset, "mean_teacher", tmp_path / "a"))
    b = run_one(_cuda_spec(tiny_dataset, "mean_teacher", tmp_path / "b"))
    assert abs(a.mean["dice"] - b.mean["dice"]) <= GPU_DICE_TOLERANCE


def test_dynamic_head_on_cuda_equals_autograd():
    from methods.text_head import dynamic_head, reference_dynamic_head

    torch.manual_seed(0)
    b, c, n = 2, 14, 5000
    shapes = [(b, 8, n), (b, 8 * c, 1), (b, 8 * c, 8), (b * c, 8, 1), (b * c, 8, 8), (b * c, 1, 1), (b * c, 1, 8)]
    inputs = [torch.randn(*s, device="cuda", requires_grad=True) for s in shapes]
    out = dynamic_head(*inputs, b, c, n)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    ref = reference_dynamic_head(*inputs, b, c)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_execution_variants_on_cuda():
    from bench.perf import execution_variants

    rows = execution_variants("mean_teacher", torch.device("cuda"), (32, 64, 64), 8, compile_=False, repeat=2)
    assert [r["variant"] for r in rows][:2] == ["baseline (fp32)", "amp"]
    assert all(r.get("s_per_step", 0) > 0 for r in rows), rows
