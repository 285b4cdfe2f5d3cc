"""Real-data plumbing: the shared TotalSegmentator CT through `folder` (label map, RAS,
protocols, sliding-window inference, evaluation), the Synapse / AMOS layouts, published splits,
fingerprints, and every bad input (one line, exit 2, nothing half-written)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core.errors import UserError
from bench.core.labels import AMOS_15, BTCV_13
from bench.core.metrics import case_metrics
from bench.core.registry import DATASETS, PROTOCOLS
from bench.core.store import cache_root
from bench.inference import predict_volume
from datasets.splits import published_split, published_split_names
from methods.networks import VNet
from tests.conftest import SHARED
from tests.test_cli import _bad

TOTALSEG = SHARED / "data" / "totalseg_example"


def _totalseg_folder(tmp_path: Path) -> Path:
    root = tmp_path / "totalseg"
    root.mkdir()
    meta = {
        "name": "totalseg_example",
        "labels": {"0": "background", "1": "spleen"},  # replaced by the label map
        "training": [{"image": str(TOTALSEG / "ct.nii.gz"), "label": str(TOTALSEG / "seg_total.nii.gz")}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def totalseg(tmp_path):
    return DATASETS.get("folder")(data_root=str(_totalseg_folder(tmp_path)), label_map="totalseg_to_btcv", partition="all-test")


def test_totalseg_loads_through_folder_with_a_label_map(totalseg):
    ds = totalseg
    assert ds.labels == BTCV_13 and ds.partition["test"] == ["seg_total"]
    cid = ds.case_ids()[0]
    img, lab = np.asarray(ds.load_image(cid)), np.asarray(ds.load_label(cid))
    # NIfTI (x, y, z) = (122, 101, 30) in RAS -> (D, H, W) = (z, y, x)
    assert img.shape == lab.shape == (30, 101, 122) and ds.spacing(cid) == (3.0, 3.0, 3.0)
    raw = np.asarray(nib.load(str(TOTALSEG / "seg_total.nii.gz")).dataobj)
    for organ, ts_id in (("spleen", 1), ("liver", 5), ("aorta", 52), ("left adrenal gland", 9)):
        assert (lab == BTCV_13.index(organ)).sum() == (raw == ts_id).sum() > 0
    assert (lab == BTCV_13.index("esophagus")).sum() == 0  # absent in this scan
    assert lab.max() <= 13 and (lab == 0).sum() > (raw == 0).sum()  # unmapped classes -> background
    assert np.array_equal(img, np.asarray(nib.load(str(TOTALSEG / "ct.nii.gz")).dataobj).transpose(2, 1, 0))


@pytest.mark.parametrize("protocol", ["default", "dhc", "ga", "genericssl"])
def test_totalseg_preprocess_infer_evaluate(totalseg, protocol):
    ds, proto = totalseg, PROTOCOLS.get(protocol)("synapse")
    cid = ds.case_ids()[0]
    native = np.asarray(ds.load_label(cid))
    image = proto.prepare_image(ds.load_image(cid))
    assert 0.0 <= image.min() and image.max() <= 1.0
    if protocol == "dhc":
        assert image.shape == (30, 50, 61)  # H and W halved
    if protocol == "genericssl":
        assert image.shape == (80, 160, 160)  # GenericSSL resizes every volume
    torch.manual_seed(0)
    net = VNet(1, ds.num_classes, 4).eval()
    pred = predict_volume(net, image, (32, 64, 64), proto.overlap, torch.device("cpu"), mode=proto.sw_mode, sw_batch_size=4)
    assert pred.shape == image.shape and pred.max() < ds.num_classes
    back = proto.to_native(pred, native.shape)  # what a run saves and scores
    assert back.shape == native.shape
    p, g, sp = proto.evaluation_pair(back, native, ds.spacing(cid))
    assert p.shape == g.shape
    if protocol == "dhc":  # the evaluation grid samples exactly the grid prediction back
        assert np.array_equal(p, pred)
    per = case_metrics(p, g, sp, ds.num_classes, distances=False, empty_rule=proto.empty_rule)
    assert all(0.0 <= m["dice"] <= 1.0 for m in per.values() if not math.isnan(m["dice"]))
    # the ground truth scored against itself on the protocol's grid
    p, g, sp = proto.evaluation_pair(proto.to_native(proto.prepare_label(native), native.shape), native, ds.spacing(cid))
    per = case_metrics(p, g, sp, ds.num_classes, empty_rule=proto.empty_rule)
    es = per[BTCV_13.index("esophagus")]
    assert per[BTCV_13.index("liver")]["dice"] == pytest.approx(1.0)
    if protocol == "default":
        assert math.isnan(es["dice"]) and per[BTCV_13.index("liver")]["hd95"] == 0.0
    else:  # DHC / TAK: an organ absent on both sides counts as Dice 1
        assert es["dice"] == 1.0 and g.shape == ((80, 160, 160) if protocol in ("ga", "genericssl") else (30, 50, 61))


def _nifti(path: Path, data: np.ndarray, affine=None, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(dtype), np.diag([1.5, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))


def test_reorientation_to_ras(tmp_path):
    root = tmp_path / "lps"
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    lps = np.diag([-1.5, -1.0, 2.0, 1.0])  # x and y flipped
    _nifti(root / "imagesTr" / "c1_0000.nii.gz", data, lps)
    _nifti(root / "labelsTr" / "c1.nii.gz", (data % 3), lps, np.uint8)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}, "file_ending": ".nii.gz"}))
    ds = DATASETS.get("folder")(data_root=str(root), partition="all-test")
    img = np.asarray(ds.load_image("c1"))
    expected = data[::-1, ::-1, :].transpose(2, 1, 0)
    assert np.array_equal(img, expected) and ds.spacing("c1") == (2.0, 1.0, 1.5)
    assert ds.labels == ("background", "liver", "spleen")


def test_folder_without_partition_draws_70_10_20(tmp_path):
    root = tmp_path / "ten"
    entries = []
    for i in range(10):
        _nifti(root / "imagesTr" / f"case{i}.nii.gz", np.full((4, 4, 4), i))
        _nifti(root / "labelsTr" / f"case{i}.nii.gz", np.zeros((4, 4, 4)), dtype=np.uint8)
        entries.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Liver"}, "training": entries}))
    ds = DATASETS.get("folder")(data_root=str(root))
    p = ds.partition
    assert (len(p["train"]), len(p["eval"]), len(p["test"])) == (7, 1, 2)
    assert ds.labels == ("background", "liver")
    again = DATASETS.get("folder")(data_root=str(root))
    assert again.root == ds.root  # cached import, not redone


def _synapse_rawdata(root: Path, ids):
    for cid in ids:
        _nifti(root / "img" / f"img{cid}.nii.gz", np.zeros((8, 8, 4)))
        lab = np.zeros((8, 8, 4))
        lab[2:4, 2:4, 1:3] = 6
        _nifti(root / "label" / f"label{cid}.nii.gz", lab, dtype=np.uint8)


def test_synapse_rawdata_and_published_splits(tmp_path):
    ids = [f"{i:04d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)]
    _synapse_rawdata(tmp_path / "RawData" / "Training", ids)
    ds = DATASETS.get("synapse")(data_root=str(tmp_path))
    assert len(ds.case_ids()) == 30 and ds.labels == BTCV_13
    assert (len(ds.partition["train"]), len(ds.partition["eval"]), len(ds.partition["test"])) == (20, 4, 6)
    assert ds.partition["test"] == ["0008", "0027", "0029", "0033", "0037", "0039"]
    for name in published_split_names("synapse"):
        published_split("synapse", name).validate(ds.case_ids())
    ga, dhc = published_split("synapse", "ga_10p"), published_split("synapse", "dhc_20p")
    assert ga.labeled == ["0023", "0028"] and set(ga.test) != set(dhc.test)  # two protocols, two test sets


def test_synapse_dhc_npy_layout(tmp_path):
    """DHC's npy files come from SimpleITK: (z, y, x) with few slices and large slices. They are
    used as stored, so the dhc protocol halves the two in-plane axes, not the slice axis."""
    (tmp_path / "npy").mkdir()
    zyx = np.arange(4 * 12 * 10, dtype=np.float32).reshape(4, 12, 10)  # 4 slices of 12 x 10
    for cid in ("0001", "0002"):
        np.save(tmp_path / "npy" / f"{cid}_image.npy", zyx)
        np.save(tmp_path / "npy" / f"{cid}_label.npy", np.ones((4, 12, 10), np.int8))
    ds = DATASETS.get("synapse")(data_root=str(tmp_path))
    assert np.array_equal(ds.load_image("0001"), zyx) and ds.spacing("0001") == (1.0, 1.0, 1.0)
    assert PROTOCOLS.get("dhc")("synapse").grid_shape(ds.load_image("0001").shape) == (4, 6, 5)


def test_amos_layout_and_modality_option(tmp_path):
    for cid, folder in (("amos_0001", "Tr"), ("amos_0004", "Tr"), ("amos_0507", "Tr"), ("amos_0008", "Va")):
        _nifti(tmp_path / f"images{folder}" / f"{cid}.nii.gz", np.zeros((6, 6, 4)))
        _nifti(tmp_path / f"labels{folder}" / f"{cid}.nii.gz", np.full((6, 6, 4), 14), dtype=np.uint8)
    all_ = DATASETS.get("amos")(data_root=str(tmp_path))
    ct = DATASETS.get("amos")(data_root=str(tmp_path), modality="ct")
    assert sorted(all_.case_ids()) == ["amos_0001", "amos_0004", "amos_0008", "amos_0507"]
    assert "amos_0507" not in ct.case_ids() and ct.name == "amos_ct" and all_.labels == AMOS_15
    assert "amos_0008" in all_.partition["test"] and "amos_0001" in all_.partition["train"]


def test_published_amos_splits_are_leak_free():
    for name in published_split_names("amos"):
        s = published_split("amos", name).validate()
        assert len(s.eval) == 24 and len(s.test) == 120
        assert len(s.labeled) + len(s.unlabeled) == 216
    assert "dhc_20p" not in published_split_names("amos")  # the published 20% lists leak eval cases
    s = published_split("amos", "dhc_20p_noleak")
    assert len(s.labeled) == 35 and "amos_0066" not in s.labeled


def test_fingerprint_is_cached_and_shares_sum_to_one(tiny_dataset):
    from datasets.fingerprint import fingerprint

    fp = fingerprint(tiny_dataset)
    assert (tiny_dataset.root / "fingerprint.json").exists()
    assert sum(fp["voxel_share"].values()) == pytest.approx(1.0)
    share = fp["voxel_share"]
    assert share["liver"] > 10 * share["left adrenal gland"]  # the imbalance is visible
    assert fingerprint(tiny_dataset) == fp


def test_list_datasets_details_shows_fingerprint(tmp_path, capsys):
    assert main(["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(_totalseg_folder(tmp_path)),
                 "--label-map", "totalseg_to_btcv", "--dataset-opt", "partition=all-test"]) == 0
    out = capsys.readouterr().out
    assert "voxel share" in out and "liver" in out and "3.00x3.00x3.00" in out


# -- bad input ------------------------------------------------------------------------------


def _no_partial_import():
    imported = cache_root() / "imported"
    return not imported.exists() or not [p for p in imported.iterdir() if p.name.startswith(".")]


def test_label_out_of_range_without_a_label_map(tmp_path, capsys):
    root = _totalseg_folder(tmp_path)
    err = _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(root)], "holds label 117")
    assert "--label-map" in err and _no_partial_import()


def test_corrupt_nifti(tmp_path, capsys):
    root = tmp_path / "corrupt"
    (root / "imagesTr").mkdir(parents=True)
    good = gzip.decompress((TOTALSEG / "ct.nii.gz").read_bytes())
    (root / "imagesTr" / "c.nii.gz").write_bytes(gzip.compress(good[:400]))  # header, no data
    (root / "labelsTr").mkdir()
    (root / "labelsTr" / "c.nii.gz").write_bytes((TOTALSEG / "seg_total.nii.gz").read_bytes())
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": [{"image": "imagesTr/c.nii.gz", "label": "labelsTr/c.nii.gz"}]}))
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(root)], "is not a readable NIfTI file")
    assert _no_partial_import()


@pytest.mark.parametrize(
    "meta, expect",
    [
        ({"labels": {"0": "background"}, "training": [{"image": "nope.nii.gz", "label": "nope_l.nii.gz"}]}, "does not exist"),
        ({"training": []}, "'labels' must map"),
        ({"labels": {"0": "background", "2": "liver"}, "training": []}, "without gaps"),
        ("{not json", "dataset.json"),
    ],
)
def test_bad_dataset_json(tmp_path, capsys, meta, expect):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "dataset.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    (root / "x").write_text("")
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(root)], expect)


def test_missing_dataset_json_and_bad_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(tmp_path / "empty")], "has no dataset.json")
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "amos", "--data-root", str(tmp_path / "empty"),
                  "--dataset-opt", "modality=pet"], "modality=pet")
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(tmp_path / "empty"),
                  "--label-map", "no_such_map"], "label map no_such_map")


def test_image_label_shape_mismatch(tmp_path, capsys):
    root = tmp_path / "mm"
    _nifti(root / "imagesTr" / "c_0000.nii.gz", np.zeros((4, 4, 4)))
    _nifti(root / "labelsTr" / "c.nii.gz", np.zeros((4, 4, 5)), dtype=np.uint8)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}))
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(root)], "differs from image shape")


def test_unknown_published_split(tmp_path):
    with pytest.raises(UserError, match="no published split 'ga_5p'"):
        published_split("synapse", "ga_5p")


# -- published configs and protocols in a run -------------------------------------------------

RELEASED_PATCH = {"dhc_synapse_20p": (64, 128, 128), "dst_synapse_20p": (64, 128, 128), "ss_net_synapse_20p": (64, 128, 128), "ad_synapse_20p": (64, 128, 128),
                  "skcdf_synapse_20p": (64, 128, 128), "desco_synapse_20p": (96, 96, 96), "co_bionet_synapse_20p": (96, 96, 96), "ga_synapse_10p": (96, 96, 96), "tak_amos_5p": (96, 96, 96)}
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_published_configs_resolve(path):
    from bench.config import load_config_file
    from bench.runner import RunRequest, resolve

    cfg = load_config_file(path)
    plans = resolve(RunRequest.build({}, config=str(path)))
    assert list(dict.fromkeys(p.method for p in plans)) == cfg["methods"]
    for st in plans:
        assert st.train.iterations == cfg["train"]["iterations"] and list(st.train.patch) == cfg["train"]["patch"]
    # the released patch sizes (DHC: 64x128x128 on Synapse; GALoss and TAK: 96^3) live in the configs only
    assert tuple(cfg["train"]["patch"]) == RELEASED_PATCH[path.stem]
    published_split(cfg["dataset"], cfg["split"]).validate()


def test_run_under_the_dhc_protocol_from_a_config(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('methods = ["supervised"]\nprotocol = "dhc"\npreset = "tiny"\nseeds = [3]\n[train]\niterations = 2\n')
    out = tmp_path / "runs"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["protocol"] == "dhc" and metrics["seed"] == 3
    config = json.loads(next(out.rglob("config.json")).read_text())
    assert config["protocol"]["resample"] == ["scale", [1.0, 0.5, 0.5]] and config["train"]["iterations"] == 2
    # DHC's rule: no organ is NaN (absent on both sides = 1, one side = 0 / 128)
    assert all(not math.isnan(m["dice"]) for case in metrics["cases"].values() for m in case.values())


def test_unknown_config_key_and_dataset_option(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('methods = ["supervised"]\ndatset = "phantom"\n')
    _bad(capsys, ["run", "--config", str(cfg), "--out", str(tmp_path / "o")], "unknown key 'datset'")
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--dataset-opt", "colour=red", "--out", str(tmp_path / "o")],
         "has no option 'colour'")


# -- fake trees of each layout, built from phantom cases, through `bench run` ------------------


def _phantom_nifti(path: Path, array_dhw: np.ndarray, spacing_dhw, dtype):
    """Write a (D, H, W) array as a RAS NIfTI (x, y, z) with the given spacing."""
    sd, sh, sw = spacing_dhw
    _nifti(path, np.asarray(array_dhw).transpose(2, 1, 0), np.diag([sw, sh, sd, 1.0]), dtype)


def _case(ds, cid):
    """One case's image, label and spacing (SimpleNamespace)."""
    from types import SimpleNamespace

    return SimpleNamespace(image=ds.load_image(cid), label=ds.load_label(cid), spacing=ds.spacing(cid))


def _tree_cases(tiny_dataset, ids):
    src = tiny_dataset.case_ids()
    for i, cid in enumerate(ids):
        c = _case(tiny_dataset, src[i % len(src)])
        yield cid, c


def _run_on(tmp_path, capsys, args):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "supervised", "--preset", "tiny", "--iterations", "2", "--no-progress", "--out", str(out), *args]) == 0
    m = json.loads(next(out.rglob("metrics.json")).read_text())
    capsys.readouterr()
    return m


def test_bench_run_on_a_synapse_rawdata_tree(tiny_dataset, tmp_path, capsys):
    split = published_split("synapse", "ga_10p")
    ids = split.labeled + split.unlabeled[:2] + split.eval[:1] + split.test[:2]
    root = tmp_path / "Synapse"
    for cid, c in _tree_cases(tiny_dataset, ids):
        _phantom_nifti(root / "img" / f"img{cid}.nii.gz", c.image, c.spacing, np.int16)
        _phantom_nifti(root / "label" / f"label{cid}.nii.gz", c.label, c.spacing, np.uint8)
    sub = tmp_path / "split.json"
    from datasets.splits import Split

    Split("ga_10p_sub", split.labeled, split.unlabeled[:2], split.eval[:1], split.test[:2]).save(sub)
    m = _run_on(tmp_path, capsys, ["--dataset", "synapse", "--data-root", str(root), "--split", str(sub), "--protocol", "ga"])
    assert m["dataset"] == "synapse" and m["protocol"] == "ga" and set(m["cases"]) == set(split.test[:2])


def test_bench_run_on_an_amos_tree(tiny_dataset, tmp_path, capsys):
    from bench.core.labels import AMOS_15

    ref = published_split("amos", "dhc_2p")
    ids = ref.labeled[:2] + ref.unlabeled[:2] + ref.eval[:1] + ref.test[:1]
    root = tmp_path / "amos22"
    for cid, c in _tree_cases(tiny_dataset, ids):
        folder = "Va" if cid in ref.test else "Tr"
        lab = np.where(c.label == BTCV_13.index("portal vein and splenic vein"), 0, c.label)  # AMOS has no such class
        _phantom_nifti(root / f"images{folder}" / f"{cid}.nii.gz", c.image, c.spacing, np.int16)
        _phantom_nifti(root / f"labels{folder}" / f"{cid}.nii.gz", lab, c.spacing, np.uint8)
    m = _run_on(tmp_path, capsys, ["--dataset", "amos", "--data-root", str(root), "--labeled", "50%", "--protocol", "dhc"])
    assert m["organs"] == list(AMOS_15[1:]) and m["protocol"] == "dhc"


def test_bench_run_on_an_nnunet_folder(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "Dataset001_Phantom"
    for cid, c in _tree_cases(tiny_dataset, [f"ph_{i:03d}" for i in range(7)]):
        _phantom_nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", c.image, c.spacing, np.int16)
        _phantom_nifti(root / "labelsTr" / f"{cid}.nii.gz", c.label, c.spacing, np.uint8)
    labels = {name.replace(" ", "_"): i for i, name in enumerate(BTCV_13)}
    (root / "dataset.json").write_text(json.dumps({"name": "Phantom", "labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    m = _run_on(tmp_path, capsys, ["--dataset", "folder", "--data-root", str(root), "--labeled", "40%"])
    assert m["dataset"] == "folder_phantom" and m["organs"] == list(BTCV_13[1:])


def test_image_label_affine_mismatch(tmp_path, capsys):
    root = tmp_path / "aff"
    _nifti(root / "imagesTr" / "c_0000.nii.gz", np.zeros((4, 4, 4)))
    shifted = np.diag([1.5, 1.0, 2.0, 1.0])
    shifted[:3, 3] = [10.0, 0.0, 0.0]
    _nifti(root / "labelsTr" / "c.nii.gz", np.zeros((4, 4, 4)), shifted, dtype=np.uint8)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}))
    _bad(capsys, ["list", "datasets", "--details", "--dataset", "folder", "--data-root", str(root)], "affines differ")


def test_wrong_layout_says_what_was_found(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "scans").mkdir()
    err = _bad(capsys, ["list", "datasets", "--details", "--dataset", "synapse", "--data-root", str(tmp_path / "x")], "found: scans")
    assert "img/img0001.nii.gz" in err


# -- protocol transforms on hand-made arrays ----------------------------------------------------


def test_protocol_windows_by_hand():
    a = np.array([[[-1000.0, -125.0, 75.0, 275.0, 3000.0]]], dtype=np.float32)
    assert PROTOCOLS.get("default")().normalize(a).ravel().tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert PROTOCOLS.get("ga")().normalize(a).ravel().tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])  # (x + 125) / 400
    # dhc: clip to [-75, 275], then min-max of the clipped volume
    b = np.array([[[-50.0, 0.0, 100.0, 150.0]]], dtype=np.float32)
    assert PROTOCOLS.get("dhc")().normalize(b).ravel().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_protocol_grids_and_strides():
    dhc_syn, dhc_amos, ga = PROTOCOLS.get("dhc")("synapse"), PROTOCOLS.get("dhc")("amos"), PROTOCOLS.get("ga")("amos")
    assert dhc_syn.grid_shape((90, 512, 512)) == (90, 256, 256) and dhc_amos.grid_shape((100, 512, 400)) == (80, 160, 160)
    assert dhc_syn.grid_spacing((90, 512, 512), (2.5, 0.7, 0.7)) == pytest.approx((2.5, 1.4, 1.4))
    # DHC's stride (16, 32, 32) on 64x128x128 patches; GA / TAK's 16 on 96^3
    assert dhc_syn.overlap == pytest.approx(1 - 32 / 128) == pytest.approx(1 - 16 / 64)
    assert ga.overlap == pytest.approx(1 - 16 / 96)
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[:, 2:6, 2:6] = 3
    down = dhc_syn.prepare_label(lab)
    assert down.shape == (4, 4, 4) and down.dtype == np.uint8 and set(np.unique(down)) == {0, 3}
    p, g, sp = ga.evaluation_pair(lab, lab, (1.0, 1.0, 1.0))
    assert p.shape == g.shape == (80, 160, 160) and sp == (1.0, 1.0, 1.0)
