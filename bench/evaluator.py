"""Validation and test of one run: sliding-window prediction under the run's protocol, the
validation score, the test on the split's test cases with the one scorer, prediction export
and the run's metrics and timing records."""

from __future__ import annotations

import numpy as np

from bench.cases import RunCases
from bench.core.metrics import case_metrics, nanmean
from bench.core.records import MetricsRecord, TimingRecord, write_record
from bench.core.scoring import penalty_distance, score_case
from bench.core.store import safe_name
from bench.core.threads import current_threads
from bench.inference import predict_volume
from bench.timing import StepTimer, device_description, peak_memory, reset_peak_memory, summarize_times
from reports.overlays import OVERLAY_FILE, extract, write_overlays


class Evaluator:
    """Predicts and scores the cases of one run (``spec``: its ``RunSpec``; ``cases``: its
    checked cases; ``amp``: whether inference runs under autocast).

    Owns what the protocol says about inference (window, overlap or stride, fusion) and the
    records a finished run writes (``metrics.json`` last: it marks the run finished).
    """

    def __init__(self, spec, cases: RunCases, amp: bool):
        self.spec, self.cases, self.amp = spec, cases, amp
        # the run's own peak memory: training and test from here (data and networks already
        # loaded); runs before it in the same process do not count
        reset_peak_memory(spec.device)

    def predict_case(self, method, image: np.ndarray, overlap) -> np.ndarray:
        """Label map (D', H', W') of ``image`` (protocol grid) by ``method.predict``."""
        t, proto = self.spec.train, self.spec.protocol
        return predict_volume(method.predict, image, t.patch, overlap, self.spec.device, mode=proto.sw_mode,
                              sw_batch_size=t.sw_batch_size, amp=self.amp, fusion=proto.fusion)

    def validation(self, method, overlay: bool = False) -> tuple[float, dict[str, float], dict | None]:
        """Validation in eval mode: ``(score, per-organ Dice, slices)``. score: the mean over the
        eval cases of the mean Dice over organs (no distances); per-organ Dice: each organ's mean
        over the eval cases (NaN where no case has it); slices (``overlay=True``): the first eval
        case's slice through its smallest organ (``reports.overlays.extract``), else None."""
        ds = self.spec.dataset
        method.train(False)
        scores, per_organ, slices = [], {o: [] for o in ds.organs}, None
        for cid in self.spec.split.eval:
            image = self.cases.image(cid)
            pred = self.predict_case(method, image, self.spec.train.val_overlap)
            label = self.cases.eval_labels[cid]
            per = case_metrics(pred, label, ds.spacing(cid), ds.num_classes, distances=False)
            scores.append(nanmean([v["dice"] for v in per.values()]))
            for c, organ in enumerate(ds.organs, 1):
                per_organ[organ].append(per.get(c, {}).get("dice", float("nan")))
            if overlay and slices is None:
                slices = extract(image, label, pred, num=1)
        method.train(True)
        return nanmean(scores), {o: nanmean(v) for o, v in per_organ.items()}, slices

    def test(self, method, used_step: int, val_dice: float | None, training: dict) -> MetricsRecord:
        """Score ``method`` (the weights of ``used_step``) on the test cases, export predictions
        when asked, and write timing.json and metrics.json. ``training``: the loop's step times,
        data waits and wall time (for timing.json)."""
        spec, ds, t = self.spec, self.spec.dataset, self.spec.train
        method.train(False)
        cases, penalty, infer_times = self._score_cases(method)
        organs = list(ds.organs)
        metrics = MetricsRecord.build(
            method=spec.method_name, dataset=ds.name, protocol=spec.protocol, split=spec.split.name,
            labeled_fraction=spec.split.labeled_fraction, seed=spec.seed, **spec.priors_names, organs=organs,
            # the imbalance the run was trained under (reports order organs by it)
            labeled_voxel_share=self.cases.voxel_share(organs), checkpoint_step=used_step, val_dice=val_dice,
            cases=cases, penalty_distance=penalty,
        )
        steps, waits = training["step"], training["data"]
        timing = TimingRecord(
            device=device_description(spec.device), train_s_per_iter=summarize_times(steps),
            data_wait_share=float(sum(waits) / max(sum(waits) + sum(steps), 1e-12)), infer_s_per_case=summarize_times(infer_times),
            train_wall_s=training["wall"], iterations=t.iterations, timing_warmup=t.timing_warmup, amp=self.amp,
            threads=current_threads(), **peak_memory(spec.device),
        )
        write_record(spec.run_dir / "timing.json", timing)
        write_record(spec.run_dir / "metrics.json", metrics)  # last: marks the run finished
        return metrics

    def _score_cases(self, method) -> tuple[dict, dict, list]:
        """Per test case: its scores on the native grid, its missed-organ penalty distance and
        the inference time; predictions saved as NIfTI in the source geometry when asked."""
        spec, ds, proto, t = self.spec, self.spec.dataset, self.spec.protocol, self.spec.train
        overlap = proto.window_overlap(t.patch) if t.overlap == "protocol" else t.overlap
        cases: dict[str, dict] = {}
        penalty: dict[str, float] = {}
        infer_times = []
        slices: dict[str, dict] = {}
        cases_iter = spec.split.test
        if spec.progress:
            from tqdm.auto import tqdm

            cases_iter = tqdm(cases_iter, desc=f"{spec.method_name} test", unit="case", leave=False)
        for cid in cases_iter:
            image = self.cases.image(cid)
            with StepTimer(spec.device) as timer:
                pred = self.predict_case(method, image, overlap)
            infer_times.append(timer.seconds)
            gt = np.asarray(ds.load_label(cid))  # checked by RunCases
            native = proto.to_native(pred, gt.shape)  # the source image's grid: what is saved and scored
            if spec.save_predictions:
                from datasets.nifti import write_nifti

                write_nifti(spec.run_dir / "predictions" / f"{safe_name(cid, 'case id')}.nii.gz", native, ds.spacing(cid), ds.affine(cid))
                slices[cid] = extract(ds.load_image(cid), gt, native)
            cases[cid] = score_case(native, gt, ds.spacing(cid), proto, list(ds.organs))
            penalty[cid] = penalty_distance(gt.shape, ds.spacing(cid), proto)
        if spec.save_predictions:  # a few slices through the small organs, for the report's pictures
            write_overlays(spec.run_dir / OVERLAY_FILE, slices, list(ds.organs))
        return cases, penalty, infer_times
