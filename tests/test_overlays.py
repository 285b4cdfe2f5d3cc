"""Pictures of segmentations (reports/overlays.py, the report's segmentation figures): slices
through the smallest organs picked by hand-checked rules, the radiological view, the file a run
keeps with ``--save-predictions``, and best / median / worst cases in report.html."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reports.overlays import PALETTE, crop_box, extract, pick_slices, read_overlays, render, render_case, to_uint8, write_overlays


def test_pick_slices_smallest_organs_first_at_their_largest_area():
    label = np.zeros((4, 6, 6), np.uint8)
    label[:, :3, :] = 1          # organ 1: 72 voxels
    label[1, 4, 4] = 2           # organ 2: 1 voxel at d = 1
    label[2, 4:6, 0:2] = 3       # organ 3: 4 + 1 voxels, largest area at d = 2
    label[3, 5, 5] = 3
    assert pick_slices(label, 3) == [(2, 1), (3, 2), (1, 0)]
    assert pick_slices(label, 1) == [(2, 1)]
    assert pick_slices(np.zeros((2, 2, 2), np.uint8)) == []


def test_crop_box_is_centred_and_stays_inside():
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = True
    assert crop_box(mask, 4) == (slice(0, 4), slice(0, 4))  # centre 1 - 2 < 0: shifted to the edge
    mask[:] = False
    mask[5, 8] = True
    assert crop_box(mask, 4) == (slice(3, 7), slice(6, 10))
    assert crop_box(mask, 32) == (slice(0, 10), slice(0, 10))  # larger than the slice: the whole slice


def test_to_uint8_ct_window_and_percentiles():
    ct = np.array([-1000.0, -175.0, 37.5, 250.0, 400.0])
    assert to_uint8(ct).tolist() == [0, 0, 128, 255, 255]  # (37.5 + 175) / 425 = 0.5 -> 127.5 -> 128
    mr = np.linspace(0, 100, 101)
    out = to_uint8(mr)
    assert out[1] == 0 and out[99] == 255 and out[50] == 128


def test_render_is_the_radiological_view():
    image = np.zeros((4, 5), np.uint8)
    label = np.zeros((4, 5), np.uint8)
    label[0, 0] = 1  # posterior (H = 0), patient's left (W = 0)
    rgb = render(image, label, np.zeros_like(label), alpha=1.0, gap=2)
    assert rgb.shape == (4, 3 * 5 + 4, 3)
    second = rgb[:, 7:12]  # the label panel
    assert second[3, 4].tolist() == PALETTE[1].tolist()  # bottom (posterior), viewer's right (patient's left)
    assert second[:3].sum() == 0 and second[3, :4].sum() == 0
    assert (rgb[:, 5:7] == 255).all()  # the gap


def test_extract_write_read_round_trip_without_pickles(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 300, (6, 20, 24)).astype(np.float32)
    label = np.zeros((6, 20, 24), np.uint8)
    label[2, 5:9, 5:9] = 1
    label[4, 15, 20] = 2
    pred = np.roll(label, 1, axis=2)
    slices = extract(image, label, pred, num=3, size=8)
    assert slices["organ"].tolist() == [2, 1] and slices["slice"].tolist() == [4, 2]
    assert slices["image"].shape == (2, 8, 8) and slices["image"].dtype == np.uint8
    assert slices["label"][0].sum() == 2 and slices["pred"][1].sum() == 16  # organ 2 at (15, 20) in its crop; organ 1 kept whole
    write_overlays(tmp_path / "o.npz", {"case_a": slices, "case_b": extract(image, np.zeros_like(label), pred)}, ["liver", "spleen"])
    cases, organs = read_overlays(tmp_path / "o.npz")
    assert organs == ["liver", "spleen"] and list(cases) == ["case_a", "case_b"]
    assert all(np.array_equal(cases["case_a"][k], slices[k]) for k in slices)
    assert len(cases["case_b"]["organ"]) == 0
    assert render_case(cases["case_a"]).shape == (2 * 8 + 2, 3 * 8 + 4, 3)
    with pytest.raises(ValueError, match="must share one grid"):
        extract(image, label[:3], pred)


def test_pick_cases_best_median_worst(tmp_path):
    from reports.figures import pick_cases
    from reports.overlays import OVERLAY_FILE

    class R:
        def __init__(self, path, seed, dice):
            self.path, self.seed = path, seed
            self.metrics = type("M", (), {"cases": {f"c{i}": {"a": {"dice": d}, "b": {"dice": d}} for i, d in enumerate(dice)}})()

    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.mkdir()
        (p / OVERLAY_FILE).write_bytes(b"")
    runs = [R(a, 0, [0.5, 0.1]), R(b, 1, [0.9, 0.3, 0.7]), R(tmp_path / "none", 2, [1.0])]  # the last kept no overlays
    picks = [(w, r.seed, c, d) for w, r, c, d in pick_cases(runs)]
    assert picks == [("best", 1, "c0", 0.9), ("median", 0, "c0", 0.5), ("worst", 0, "c1", 0.1)]  # sorted 0.1 .3 .5 .7 .9


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """Two tiny supervised runs that kept their predictions and overlays, and their report."""
    from bench.cli import main

    out = tmp_path_factory.mktemp("kept") / "runs"
    assert main(["run", "--methods", "supervised", "--seeds", "0,1", "--preset", "tiny", "--set", "iterations=2",
                 "--save-predictions", "--out", str(out), "--no-progress"]) == 0
    assert main(["report", "--runs", str(out), "--format", "html"]) == 0
    return out


def test_a_run_keeps_overlays_and_the_report_shows_them(kept):
    out = kept
    files = sorted(out.rglob("overlays.npz"))
    assert len(files) == 2
    cases, organs = read_overlays(files[0])
    metrics = json.loads((files[0].parent / "metrics.json").read_text())
    assert list(cases) == list(metrics["cases"]) and organs == metrics["organs"]
    from datasets.nifti import read_nifti

    for cid, s in cases.items():  # crops of the saved prediction (layout D, H, W) at the kept slices
        pred, _ = read_nifti(files[0].parent / "predictions" / f"{cid}.nii.gz")
        assert len(s["organ"]) == 3 and s["pred"].max() <= len(organs)
        assert s["pred"].shape[1:] == (min(128, pred.shape[1]), min(128, pred.shape[2]))
        for i, d in enumerate(s["slice"]):
            assert set(np.unique(s["pred"][i])) <= set(np.unique(pred[d]))
    fig = out / "report" / "figures" / "segmentations_supervised.png"
    assert fig.exists() and fig.stat().st_size > 1000
    page = (out / "report" / "report.html").read_text()
    assert "Segmentations, supervised: best, median and worst test case" in page



def test_the_segmentations_render_in_headless_chromium(kept, tmp_path):
    """Every image of report.html (the segmentation figures among them) decodes in Chromium."""
    import subprocess

    from tests.test_reports import _tool

    chromium = _tool("chromium")
    page = (kept / "report" / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>document.body.setAttribute('data-images', [...document.images].map("
                                              "i => i.complete && i.naturalWidth > 0 ? i.alt : 'BROKEN ' + i.alt).join('|'))"
                                              "</script></body>"))
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=5000",
                        probe.as_uri()], capture_output=True, text=True, timeout=120)
    import re

    found = re.search(r'data-images="([^"]*)"', r.stdout)
    assert found, r.stdout[-500:] + r.stderr[-500:]
    images = found.group(1).split("|")
    assert "BROKEN" not in found.group(1) and any(a.startswith("Segmentations, supervised") for a in images), images
