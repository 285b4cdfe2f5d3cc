import json

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
    assert set(metrics["per_organ"]) == set(tiny_dataset.organs)
    assert set(metrics["cases"]) == set(spec.split.test)
