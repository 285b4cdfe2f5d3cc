"""``bench predict`` / ``bench export`` (bench/predict.py): the mechanics of predicting new scans
with trained runs and bundles - geometry equal to each input, labels in range, ensembles, test-time
flips, bundles that predict with an empty cache - on the real CT in ../shared/data and on flipped /
anisotropic synthetic inputs. The quality of a phantom-trained model is not the point."""

from __future__ import annotations

import json
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from bench.core.errors import UserError
from bench.predict import (
    export_bundle,
    grid_probabilities,
    input_files,
    load_bundle,
    load_run,
    looks_like_ct,
    lr_swap,
    predict_files,
)
from tests.conftest import SHARED

CT = SHARED / "data" / "totalseg_example" / "ct.nii.gz"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs: supervised seeds 0 and 1, and tak (hash text priors)."""
    from bench.cli import main

    out = tmp_path_factory.mktemp("predict_runs")
    assert main(["run", "--methods", "supervised,tak", "--seeds", "0,1", "--preset", "tiny", "--text-encoder", "hash:32",
                 "--set", "iterations=2", "--set", "val_every=2", "--out", str(out), "--no-progress"]) == 0
    found = {}
    for m in out.rglob("metrics.json"):
        rec = json.loads(m.read_text())
        found[(rec["method"], rec["seed"])] = m.parent
    return found


def _nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_predict_the_real_ct_keeps_its_geometry(runs, tmp_path):
    model = load_run(runs[("supervised", 0)], CPU)
    res = predict_files([model], input_files(CT), tmp_path / "out", CPU)
    out, src = nib.load(str(tmp_path / "out" / "ct.nii.gz")), nib.load(str(CT))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine) and out.get_data_dtype() == np.uint8
    labels = np.asarray(out.dataobj)
    assert labels.min() >= 0 and labels.max() <= len(model.organs)
    assert res[0]["warning"] is None and res[0]["shape"] == [30, 101, 122]


@pytest.mark.parametrize("flip_axes, zooms", [((0,), (0.8, 1.2, 4.0)), ((0, 1), (1.5, 1.5, 2.5)), ((), (3.0, 1.0, 0.7))])
def test_flipped_and_anisotropic_inputs_come_back_on_their_own_grid(runs, tmp_path, flip_axes, zooms):
    """An LPS (or LAS) input with anisotropic voxels: the label map has the input's shape, voxel
    order and affine, and reads back in the canonical layout on the same grid as the image."""
    from datasets.nifti import read_nifti

    src = nib.load(str(CT))
    data = np.asarray(src.dataobj).astype(np.int16)
    affine = np.diag([*zooms, 1.0])
    for a in flip_axes:  # store the voxels mirrored along axis a, the affine pointing the other way
        data = np.flip(data, a).copy()
        affine[a, a] = -affine[a, a]
        affine[a, 3] = zooms[a] * (data.shape[a] - 1)
    path = _nifti(tmp_path / "odd.nii.gz", data, affine)
    predict_files([load_run(runs[("supervised", 0)], CPU)], [path], tmp_path / "out", CPU)
    out = nib.load(str(tmp_path / "out" / "odd.nii.gz"))
    assert out.shape == data.shape and np.allclose(out.affine, affine) and nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine)
    image, sp = read_nifti(path)
    labels, sp2 = read_nifti(tmp_path / "out" / "odd.nii.gz")
    assert labels.shape == image.shape and sp == sp2


def test_lr_swap_hand_written():
    organs = ["spleen", "right kidney", "left kidney", "liver", "right adrenal gland", "left adrenal gland", "left lung"]
    # background 0; RK 2 <-> LK 3; RAG 5 <-> LAG 6; "left lung" has no right partner here: kept
    assert lr_swap(organs) == [0, 1, 3, 2, 4, 6, 5, 7]


class _PositionNet:
    """A 'network' that calls the right half of the image (high W) 'right kidney' (channel 1) and
    the left half 'left kidney' (channel 2), whatever the image shows."""

    def predict(self, x):
        b, _, d, h, w = x.shape
        logits = torch.zeros(b, 3, d, h, w)
        logits[:, 1, ..., w // 2:] = 10.0
        logits[:, 2, ..., : w // 2] = 10.0
        return logits


def test_tta_flip_maps_left_and_right_back():
    """Under a W mirroring the position-driven net calls the left half 'right kidney'; mapped back
    with the channels exchanged, the mean keeps right = right: the TTA result equals no TTA."""
    from bench.core.protocol import Protocol
    from bench.predict import Model

    m = Model("t", _PositionNet(), ("right kidney", "left kidney"), Protocol(name="t", version="1"), (4, 8, 8), 0.0, 1, False)
    img = np.zeros((4, 8, 8), np.float32)
    plain = grid_probabilities(m, img, CPU, "none")
    tta = grid_probabilities(m, img, CPU, "flip")
    assert np.allclose(plain, tta, atol=1e-5) and np.allclose(tta.sum(0), 1.0, atol=1e-5)
    assert (tta.argmax(0)[..., 4:] == 1).all() and (tta.argmax(0)[..., :4] == 2).all()


def test_ensemble_averages_the_probabilities_of_its_runs(runs, tmp_path):
    from datasets.nifti import read_nifti

    a, b = load_run(runs[("supervised", 0)], CPU), load_run(runs[("supervised", 1)], CPU)
    predict_files([a, b], [CT], tmp_path / "ens", CPU)
    image, _ = read_nifti(CT)
    grid = a.protocol.prepare_image(image)
    want = ((grid_probabilities(a, grid, CPU) + grid_probabilities(b, grid, CPU)) / 2).argmax(0)
    got, _ = read_nifti(tmp_path / "ens" / "ct.nii.gz")
    assert np.array_equal(got, a.protocol.to_native(want.astype(np.uint8), image.shape))


def test_probability_maps_on_the_input_grid(runs, tmp_path):
    model = load_run(runs[("supervised", 0)], CPU)
    predict_files([model], [CT], tmp_path / "p", CPU, save_probabilities=True, tta="flip")
    prob = nib.load(str(tmp_path / "p" / "ct_probabilities.nii.gz"))
    assert prob.shape == (*nib.load(str(CT)).shape, len(model.organs) + 1)
    assert np.allclose(np.asarray(prob.dataobj).sum(-1), 1.0, atol=1e-3)


def test_bundle_predicts_like_the_run_with_an_empty_cache(runs, tmp_path, monkeypatch):
    """tak's bundle carries its text-prior tensor: with an empty BENCH_CACHE and no hub access it
    gives the labels of the run folder."""
    run = runs[("tak", 0)]
    bundle = export_bundle(run, tmp_path / "tak.bench")
    predict_files([load_run(run, CPU)], [CT], tmp_path / "from_run", CPU)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predict_files([load_bundle(bundle, CPU)], [CT], tmp_path / "from_bundle", CPU)
    a = np.asarray(nib.load(str(tmp_path / "from_run" / "ct.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "from_bundle" / "ct.nii.gz")).dataobj)
    assert np.array_equal(a, b)
    assert not (tmp_path / "empty_cache").exists() or not any((tmp_path / "empty_cache").rglob("*.pt"))


def test_a_bundle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    bad = tmp_path / "evil.bench"
    bad.write_bytes(pickle.dumps({"format": "bench-bundle", "x": Evil()}))
    with pytest.raises(UserError, match="not a bench bundle or is corrupt"):
        load_bundle(bad, CPU)
    other = tmp_path / "other.bench"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not a bench bundle"):
        load_bundle(other, CPU)


def test_refusals_name_the_problem(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs[("supervised", 0)], run)
    for name in ("best.pt", "checkpoint.pt"):
        (run / name).unlink()
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_run(run, CPU)
    with pytest.raises(UserError, match="give a run folder"):
        load_run(tmp_path / "nothing", CPU)
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(UserError, match="DICOM.*dcm2niix"):
        input_files(dicom)
    with pytest.raises(UserError, match="not a NIfTI file"):
        input_files(dicom / "IM0001")
    a = load_run(runs[("supervised", 0)], CPU)
    b = load_run(runs[("supervised", 1)], CPU)
    b.organs = b.organs[:-1]
    with pytest.raises(UserError, match="other labels"):
        predict_files([a, b], [CT], tmp_path / "o", CPU)


def test_an_mr_like_input_is_warned_about_not_refused(runs, tmp_path):
    src = nib.load(str(CT))
    mr = np.clip(np.asarray(src.dataobj).astype(np.float32) + 1024, 0, None) / 4  # positive, MR-like intensities
    path = _nifti(tmp_path / "mr.nii.gz", mr, src.affine)
    assert looks_like_ct(np.asarray(src.dataobj)) and not looks_like_ct(mr)
    lines = []
    res = predict_files([load_run(runs[("supervised", 0)], CPU)], [path], tmp_path / "out", CPU, log=lines.append)
    assert res[0]["warning"] and "do not look like CT" in lines[0] and (tmp_path / "out" / "mr.nii.gz").exists()


def test_predict_and_export_commands(runs, tmp_path, capsys):
    """`bench export` then `bench predict --bundle` and `--run` give the same labels; bad input is
    one line and exit 2, before any model loads."""
    from bench.cli import main

    run = runs[("supervised", 0)]
    assert main(["export", str(run), "--out", str(tmp_path / "m.bench")]) == 0
    assert main(["predict", "--bundle", str(tmp_path / "m.bench"), "--input", str(CT), "--out", str(tmp_path / "b")]) == 0
    assert main(["predict", "--run", str(run), "--input", str(CT.parent), "--out", str(tmp_path / "r"), "--tta", "none"]) == 0
    a = np.asarray(nib.load(str(tmp_path / "b" / "ct.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "r" / "ct.nii.gz")).dataobj)
    assert np.array_equal(a, b) and sorted(p.name for p in (tmp_path / "r").iterdir()) == ["ct.nii.gz", "seg_total.nii.gz"]
    capsys.readouterr()
    for argv, msg in ((["predict", "--run", str(run), "--input", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "x")], "does not exist"),
                      (["predict", "--input", str(CT), "--out", str(tmp_path / "x")], "one of the arguments --run --bundle is required"),
                      (["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "y.bench")], "give a run folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and msg in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.bench").exists()
