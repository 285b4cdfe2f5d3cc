import json

import pytest
import torch

from bench.train import Trainer, run_one
from tests.helpers import tiny_spec


def _weights(trainer):
    return {f"{k}.{n}": v.clone() for k, m in trainer.method.modules().items() for n, v in m.state_dict().items()}


def test_resume_after_interruption_gives_the_same_weights(tiny_dataset, tmp_path):
    full = Trainer(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "a", iterations=6))
    full.fit()

    spec = tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "b", iterations=6)
    spec.stop_after = 3  # "killed" after 3 steps (the checkpoint at step 3 survives)
    first = Trainer(spec)
    first.fit()
    assert first.step == 3
    spec.stop_after = None
    second = Trainer(spec)  # a new process would do the same: read the checkpoint
    second.fit()
    assert second.step == 6
    wa, wb = _weights(full), _weights(second)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    train_steps = [s for s, line in zip(steps, (tmp_path / "b" / "log.jsonl").read_text().splitlines()) if "loss" in line]
    assert train_steps == list(range(6))  # no duplicated log lines after the resume


def test_run_folder_contents(tiny_dataset, tmp_path):
    spec = tiny_spec(tiny_dataset, "supervised", tmp_path / "r")
    spec.config = {"method": "supervised"}
    metrics = run_one(spec)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "metrics.json", "timing.json", "log.jsonl", "checkpoint.pt"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    timing = json.loads((tmp_path / "r" / "timing.json").read_text())
    assert timing["train_s_per_iter"]["n"] == 3 and timing["infer_s_per_case"]["n"] == 2
    assert 0 <= timing["data_wait_share"] <= 1 and timing["peak_memory_mb"] > 0
    assert set(metrics.per_organ) == set(tiny_dataset.organs)
    assert set(metrics.cases) == set(spec.split.test)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_channels_last_is_execution_only(tiny_dataset, tmp_path):
    """--set channels_last=true changes the memory layout, not the computation: the same losses
    (up to float reassociation in the convolutions) and the same run folder hash."""
    from bench.runner import RunRequest, plan

    run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "a"))
    run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "b", channels_last=True))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == len(b) > 0
    assert all(abs(x - y) <= 1e-3 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    flags = {"methods": "mean_teacher", "preset": "tiny"}
    plain, _, _ = plan(RunRequest.build(flags, out=str(tmp_path / "runs"), progress=False))
    fast, _, _ = plan(RunRequest.build(flags, ["channels_last=true", "compile=true"], out=str(tmp_path / "runs"), progress=False))
    assert plain[0].dir == fast[0].dir
    assert fast[0].execution() == {"compile": True, "channels_last": True, "ddp": "auto"}


@pytest.mark.slow
def test_compiled_networks_train_and_checkpoint_like_eager(tiny_dataset, tmp_path):
    """--set compile=true (torch.compile of every network, in place): same losses within float
    tolerance, and a checkpoint with the eager state_dict keys."""
    run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "a"))
    run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "b", compile=True))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert all(abs(x - y) <= 1e-3 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    ka = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    kb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert ka["modules"].keys() == kb["modules"].keys()
    for name in ka["modules"]:
        assert ka["modules"][name].keys() == kb["modules"][name].keys(), name
