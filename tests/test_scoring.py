"""The one scorer and the results format: a run's metrics.json equals `bench evaluate` of its
saved predictions under every protocol; hand-computed scores; records refuse future schemas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.core.protocol import Protocol, nearest_source_index, resize
from bench.core.records import SCHEMA_VERSION, MetricsRecord, read_record, write_record
from bench.core.registry import PROTOCOLS
from bench.core.scoring import score_case
from datasets.splits import Split, published_split


def _lps_nifti(path: Path, array_dhw: np.ndarray, spacing_dhw, dtype):
    """A (D, H, W) array stored as BTCV stores it: x and y flipped (LPS-like affine), off the origin."""
    sd, sh, sw = spacing_dhw
    xyz = np.asarray(array_dhw).transpose(2, 1, 0)[::-1, ::-1, :]
    affine = np.array([[-sw, 0, 0, 120.0], [0, -sh, 0, 80.0], [0, 0, sd, -40.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(xyz).astype(dtype), affine), str(path))


def _case(ds, cid):
    """One case's image, label and spacing (SimpleNamespace)."""
    from types import SimpleNamespace

    return SimpleNamespace(image=ds.load_image(cid), label=ds.load_label(cid), spacing=ds.spacing(cid))


@pytest.fixture(scope="module")
def synapse_tree(tiny_dataset, tmp_path_factory):
    """A BTCV RawData tree (img/, label/) of phantom cases, and a split over its ids."""
    root = tmp_path_factory.mktemp("scoring") / "Synapse"
    split = published_split("synapse", "ga_10p")
    ids = split.labeled + split.unlabeled[:2] + split.eval[:1] + split.test[:3]
    src = tiny_dataset.case_ids()
    for i, cid in enumerate(ids):
        c = _case(tiny_dataset, src[i % len(src)])
        _lps_nifti(root / "img" / f"img{cid}.nii.gz", c.image, c.spacing, np.int16)
        _lps_nifti(root / "label" / f"label{cid}.nii.gz", c.label, c.spacing, np.uint8)
    sub = root.parent / "split.json"
    Split("ga_10p_sub", split.labeled, split.unlabeled[:2], split.eval[:1], split.test[:3], meta={"fraction": 0.1}).save(sub)
    return root, sub


@pytest.mark.parametrize("protocol", ["default", "dhc", "ga",
                                      # 80x160x160 at stride 4 / 16: ~800 windows of the tiny patch per case
                                      pytest.param("genericssl", marks=pytest.mark.slow)])
def test_run_metrics_equal_evaluate_of_saved_predictions(synapse_tree, tmp_path, capsys, protocol):
    root, sub = synapse_tree
    out = tmp_path / "runs"
    assert main(["run", "--methods", "supervised", "--preset", "tiny", "--iterations", "2", "--no-progress", "--out", str(out),
                 "--dataset", "synapse", "--data-root", str(root), "--split", str(sub), "--protocol", protocol,
                 "--save-predictions"]) == 0
    run = next(out.rglob("metrics.json")).parent
    stored = json.loads((run / "metrics.json").read_text())
    preds = sorted(p.name for p in (run / "predictions").iterdir())
    assert preds == [f"{c}.nii.gz" for c in sorted(stored["cases"])]
    # the prediction files lie on their labels' grids (same affine), in the source's voxel order
    for name in preds:
        p, g = nib.load(str(run / "predictions" / name)), nib.load(str(root / "label" / f"label{name}"))
        assert p.shape == g.shape and np.allclose(p.affine, g.affine) and p.get_data_dtype() == np.uint8
    ev = tmp_path / "ev.json"
    assert main(["evaluate", "--protocol", protocol, "--pred", str(run / "predictions"), "--gt", str(root / "label"),
                 "--out", str(ev)]) == 0
    again = json.loads(ev.read_text())
    capsys.readouterr()
    assert set(again["cases"]) == set(stored["cases"])
    for cid, organs in stored["cases"].items():
        for organ, metrics in organs.items():
            for k, v in metrics.items():
                w = again["cases"][cid][organ][k]
                assert (v is None and w is None) or v == pytest.approx(w, abs=1e-6), (cid, organ, k)
    assert stored["labeled_fraction"] == 0.1 and stored["schema_version"] == SCHEMA_VERSION
    # NSD is scored by the run and reproduced by evaluate (compared above, key by key)
    assert all("nsd" in m for organs in stored["cases"].values() for m in organs.values())
    assert stored["nsd_tolerance"] == again["nsd_tolerance"] == 1.0


def test_score_case_hand_computed():
    """2 organs on a 1x4x4 grid, spacing 2 mm in-plane: Dice and (voxel-unit) distances by hand."""
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 0, 0:2] = 1  # organ 1: two voxels
    pred = np.zeros_like(gt)
    pred[0, 0, 1:3] = 1  # overlaps one voxel, shifted by one
    proto = Protocol(name="t", version="1")
    s = score_case(pred, gt, (1.0, 2.0, 2.0), proto, ["a", "b"])
    assert s["a"]["dice"] == pytest.approx(2 * 1 / 4)
    # surfaces = the masks themselves; pred -> gt: 0 and 2 mm (one voxel of 2 mm); gt -> pred: 2 and 0
    assert s["a"]["asd"] == pytest.approx(1.0) and s["a"]["assd"] == pytest.approx(1.0)
    assert s["a"]["hd95"] == pytest.approx(np.percentile([0, 2, 2, 0], 95))
    # NSD at 1 mm: the two overlapping voxels (distance 0) of four surface voxels
    assert s["a"]["nsd"] == pytest.approx(2 / 4)
    assert all(math.isnan(v) for v in s["b"].values())  # absent on both sides: not counted
    dhc = Protocol(name="t", version="1", empty_rule="dhc", distance_unit="voxel")
    s = score_case(pred, gt, (1.0, 2.0, 2.0), dhc, ["a", "b"])
    # voxel units: the shifted voxels lie 1 voxel away, within the tolerance of 1: NSD 1
    assert s["a"]["asd"] == pytest.approx(0.5) and s["a"]["nsd"] == 1.0
    assert s["b"] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0, "nsd": 1.0}
    with pytest.raises(UserError, match="must be on its label's grid"):
        score_case(pred[:, :2], gt, (1.0, 1.0, 1.0), proto, ["a", "b"])


@pytest.mark.parametrize("native,grid", [((9, 20, 31), (9, 10, 15)), ((7, 33, 40), (5, 16, 16)), ((6, 8, 8), (6, 8, 8))])
def test_to_native_keeps_what_the_evaluation_grid_samples(native, grid):
    """Scoring the native map on a coarser protocol grid sees exactly the grid prediction."""
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=grid).astype(np.uint8)
    proto = Protocol(name="t", version="1", resample=("shape", grid), eval_grid="protocol")
    back = proto.to_native(pred, native)
    assert back.shape == native and back.dtype == np.uint8
    assert np.array_equal(resize(back, grid, "nearest"), pred)
    assert list(nearest_source_index(20, 10)) == list(range(0, 20, 2))


def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path, capsys):
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[2:4, 2:4, 1:3] = 1
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / "gt" / "c1.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 4.0, 1.0])), str(tmp_path / "pred" / "c1.nii.gz"))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    assert "is not on the voxel grid of" in capsys.readouterr().err
    assert not (tmp_path / "pred" / "metrics.json").exists()


def _record(**kw) -> MetricsRecord:
    cases = {"c1": {"liver": {"dice": 0.5, "hd95": 2.0, "asd": 1.0, "assd": 1.0}}}
    return MetricsRecord.build(method="m", dataset="d", protocol=Protocol(name="default", version="1"), split="s", seed=0,
                               organs=["liver"], cases=cases, **kw)


def test_records_round_trip_and_refuse_a_future_schema(tmp_path):
    rec = _record(labeled_fraction=0.1)
    write_record(tmp_path / "metrics.json", rec)
    back = read_record(tmp_path / "metrics.json", "metrics")
    assert back == rec and back.mean["dice"] == 0.5 and back.labeled_fraction == 0.1
    data = json.loads((tmp_path / "metrics.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"schema_version {SCHEMA_VERSION + 1}, newer than this suite's"):
        read_record(tmp_path / "metrics.json", "metrics")
    del data["schema_version"]  # written before records were versioned: read as version 1
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    assert read_record(tmp_path / "metrics.json", "metrics").labeled_fraction == 0.1


def test_report_refuses_a_future_record_in_one_line(tmp_path, capsys):
    d = tmp_path / "runs" / "x" / "seed_0"
    d.mkdir(parents=True)
    data = _record(labeled_fraction=0.1).to_dict() | {"schema_version": 99}
    (d / "metrics.json").write_text(json.dumps(data))
    assert main(["report", "--runs", str(tmp_path / "runs"), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "schema_version 99" in err


@pytest.mark.parametrize("protocol,patch,shape,windows", [
    ("ga", (96, 96, 96), (128, 256, 256), 3 * 6 * 6),      # stride 16 along D, 32 in-plane (TAK's test)
    ("dhc", (64, 128, 128), (80, 256, 256), 2 * 5 * 5),    # stride 16 along D, 32 in-plane (DHC test.py)
    ("default", (32, 64, 64), (40, 80, 80), 2 * 2 * 2),    # ours: overlap 0.5
    ("genericssl", (64, 128, 128), (80, 160, 160), 5 * 3 * 3),  # stride 4 along D, 16 in-plane (GenericSSL test.py --speed 0)
])
def test_protocol_windows_counted(protocol, patch, shape, windows):
    """The released tests step 16 voxels along D and 32 in-plane: ceil((n - p) / s) + 1 windows per
    axis. One overlap 1 - 16/96 on every axis made MONAI step 15 (4 x 12 x 12 = 576 windows here)."""
    import torch

    from bench.inference import predict_volume

    proto = PROTOCOLS.get(protocol)("synapse")
    seen = []

    def net(x):
        seen.append(x.shape[0])
        return torch.zeros(x.shape[0], 3, *x.shape[2:])

    predict_volume(net, np.zeros(shape, np.float32), patch, proto.window_overlap(patch), torch.device("cpu"),
                   mode=proto.sw_mode, sw_batch_size=4, fusion=proto.fusion)
    assert sum(seen) == windows


def test_softmax_fusion_differs_from_logit_fusion():
    """Two windows overlapping along W. Window A's logits (2, 0, -10), window B's (0, 1.5, 10):
    mean logits (1, 0.75, 0) pick class 0 in the overlap; mean softmax probabilities
    ((0.881, 0.119, 0) + (0, 0, 1)) / 2 pick class 2 (the released tests average softmax)."""
    import torch

    from bench.inference import predict_volume

    logits = [torch.tensor([2.0, 0.0, -10.0]), torch.tensor([0.0, 1.5, 10.0])]

    def net(x):
        out = torch.empty(x.shape[0], 3, *x.shape[2:])
        for i in range(x.shape[0]):
            out[i] = logits[net.calls % 2][:, None, None, None]
            net.calls += 1
        return out

    vol = np.zeros((16, 16, 24), np.float32)
    res = {}
    for fusion in ("logits", "softmax"):
        net.calls = 0
        res[fusion] = predict_volume(net, vol, (16, 16, 16), (0.0, 0.0, 0.5), torch.device("cpu"), mode="constant",
                                     sw_batch_size=1, fusion=fusion)
    for r in res.values():  # outside the overlap each window decides alone
        assert (r[..., :8] == 0).all() and (r[..., 16:] == 2).all()
    assert (res["logits"][..., 8:16] == 0).all() and (res["softmax"][..., 8:16] == 2).all()


@pytest.mark.parametrize("name", ["default", "dhc", "ga", "genericssl"])
@pytest.mark.parametrize("dataset", ["synapse", "amos"])
def test_protocols_describe_every_field_and_hold_allowed_choices(name, dataset):
    """A protocol's description (hashed into every run's config) is its dataclass, field by
    field, so a new field always enters the hash; choice fields hold one of their choices."""
    import dataclasses
    import typing

    from bench.core.protocol import Protocol
    from bench.core.registry import PROTOCOLS

    p = PROTOCOLS.get(name)(dataset)
    assert list(p.describe()) == [f.name for f in dataclasses.fields(Protocol)]
    hints = typing.get_type_hints(Protocol)
    for f in dataclasses.fields(Protocol):
        if typing.get_origin(hints[f.name]) is typing.Literal:
            assert getattr(p, f.name) in typing.get_args(hints[f.name]), f.name


@pytest.mark.parametrize("order, expect", [
    # resample the raw HU first: (-200 + 0) / 2 = -100 and 400 -> clip -75, 275 -> min-max 0, 1
    ("resample_first", [0.0, 1.0]),
    # clip and min-max first: -75, 0, 275, 275 -> 0, 75/350, 1, 1 -> pairs averaged: 75/700, 1
    ("normalize_first", [75 / 700, 1.0]),
])
def test_dhc_amos_intensity_order_by_hand(order, expect):
    import numpy as np

    proto = Protocol(name="t", version="1", window=(-75.0, 275.0), norm="minmax", resample=("shape", (1, 1, 2)), order=order)
    out = proto.prepare_image(np.array([[[-200.0, 0.0, 400.0, 400.0]]], dtype=np.float32))
    assert out.shape == (1, 1, 2) and out.ravel().tolist() == pytest.approx(expect, abs=1e-6)


def test_the_dhc_protocol_resamples_raw_hu_first_on_amos_only():
    from bench.core.registry import PROTOCOLS

    assert PROTOCOLS.get("dhc")("amos").order == "resample_first" and PROTOCOLS.get("dhc")("amos").version == "3"
    assert PROTOCOLS.get("dhc")("synapse").order == "normalize_first"


def test_released_all_background_rule_of_tak_and_ga(tmp_path):
    """TAK / GA's released test scores an all-background prediction 0 on every metric; ours
    scores each organ by the protocol's empty rule (a missed organ: Dice 0, distance 128)."""
    import dataclasses

    import numpy as np

    from bench.core.protocol import ProtocolOptions
    from bench.core.registry import PROTOCOLS
    from bench.core.scoring import score_case

    gt = np.zeros((8, 8, 8), dtype=np.int64)
    gt[2:5, 2:5, 2:5] = 1  # organ a present, organ b absent
    pred = np.zeros_like(gt)
    base = dataclasses.replace(PROTOCOLS.get("ga")("synapse"), eval_shape=None, eval_grid="native")
    ours = score_case(pred, gt, (1, 1, 1), base, ["a", "b"])
    assert ours["a"]["dice"] == 0 and ours["a"]["hd95"] == 128 and ours["b"]["dice"] == 1.0
    released = score_case(pred, gt, (1, 1, 1), base.with_options(ProtocolOptions(released_all_background=True)), ["a", "b"])
    assert {o: (m["dice"], m["hd95"], m["asd"]) for o, m in released.items()} == {"a": (0, 0, 0), "b": (0, 0, 0)}
    assert released["a"]["missed"] is True and released["b"]["missed"] is False
    with pytest.raises(UserError, match="released_all_background applies to the ga protocol"):
        PROTOCOLS.get("dhc")("synapse").with_options(ProtocolOptions(released_all_background=True))
