"""Helpers of ``python -m bench perf`` (the timings themselves are benchmarks: ``tox -e bench``)."""


def test_interleaved_medians_runs_each_callable_every_round_in_shuffled_orders():
    """Each callable runs warm-up + rounds times; the order changes between rounds (so drift
    weighs on all of them alike); the result is the median of each one's times."""
    import torch

    from bench.perf import _interleaved_medians

    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    med = _interleaved_medians(fns, torch.device("cpu"), rounds=6, warmup=1)
    assert set(med) == set("abcd") and all(v >= 0 for v in med.values())
    assert calls[:4] == list("abcd") and len(calls) == 4 + 6 * 4
    rounds = [tuple(calls[4 + 4 * r : 8 + 4 * r]) for r in range(6)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 1
