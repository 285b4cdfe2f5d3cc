import numpy as np
import torch

from bench.data import TwoStreamSampler, random_crop
from bench.train import Trainer
from tests.helpers import tiny_spec


def _sampler(seed=0):
    rng = np.random.default_rng(0)
    lab = [(rng.random((20, 40, 40), dtype=np.float32), rng.integers(0, 3, (20, 40, 40)).astype(np.uint8)) for _ in range(2)]
    unl = [rng.random((20, 40, 40), dtype=np.float32) for _ in range(3)]
    return TwoStreamSampler(lab, unl, (16, 32, 32), 2, 2, seed)


def test_unlabeled_batches_carry_no_labels():
    labeled, unlabeled = _sampler().batch(0)
    assert set(labeled) == {"image", "label"}
    assert set(unlabeled) == {"image"}
    assert labeled["image"].shape == (2, 1, 16, 32, 32) and labeled["label"].dtype == torch.int64
    assert unlabeled["image"].shape == (2, 1, 16, 32, 32)


def test_batches_depend_only_on_seed_and_step():
    a, b = _sampler(), _sampler()
    for step in (5, 0, 5):
        la, ua = a.batch(step)
        lb, ub = b.batch(step)
        assert torch.equal(la["image"], lb["image"]) and torch.equal(ua["image"], ub["image"])
    assert not torch.equal(a.batch(1)[0]["image"], a.batch(2)[0]["image"])


def test_crop_pads_small_volumes_and_keeps_alignment():
    rng = np.random.default_rng(0)
    img = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    lab = (img % 3).astype(np.uint8)
    ci, cl = random_crop(rng, [img, lab], (16, 16, 16), flip=True)
    assert ci.shape == (16, 16, 16)
    np.testing.assert_array_equal(ci % 3, cl)  # same crop and flips for both


def test_trainer_never_reads_labels_of_unlabeled_cases(tiny_dataset, tmp_path, monkeypatch):
    spec = tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "run")
    read = []
    original = type(tiny_dataset).load_label

    def spy(self, case_id):
        read.append(case_id)
        return original(self, case_id)

    monkeypatch.setattr(type(tiny_dataset), "load_label", spy)
    trainer = Trainer(spec)
    trainer.fit()
    assert read, "labels of labeled / eval cases are read"
    assert not set(read) & set(spec.split.unlabeled)
    assert len(trainer.unlabeled) == len(spec.split.unlabeled)
