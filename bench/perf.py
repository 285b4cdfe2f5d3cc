"""``python -m bench perf``: the suite's own speed, as ratios measured side by side in one run.

* harness overhead: one engine training step of a method (``Trainer``: batch from the
  prefetcher, lr schedule, AMP context, NaN check, optimiser, EMA, logging) vs the bare
  ``training_step`` + backward + optimiser step on tensors already in memory (goal <= 1.10);
* data wait share of the engine's steps (goal < 5 %);
* metrics: our per-case HD95 + ASD for all organs vs MONAI's ``HausdorffDistanceMetric`` +
  ``SurfaceDistanceMetric`` and vs medpy, on the same multi-class volume (values compared;
  goal: >= 5x faster);
* inference: each method vs a plain V-Net of the same width (TAK's goal: <= 1.10), timed in interleaved
  rounds; sliding-window overlap 0.5 vs 0.25 (and how many windows each needs);
* achieved GFLOP/s of a training step (FLOPs counted by ``torch.utils.flop_counter``) against
  the peak the user states (``--peak-gflops``; for CPUs we assume cores x 32 FLOP/cycle
  (AVX2 FMA, fp32) x 2.5 GHz unless told);
* ``--memory``: peak memory of two training steps (forward, backward, SGD with momentum) of
  each method at a preset's patch, width and batch, every method in a fresh process (CUDA
  allocator peak on GPUs, peak RSS minus the RSS before the first step on CPUs), and the time
  of the second step (one sample: a rough figure, the harness timing is the careful one).

Timings take the median of repeated runs after warm-up (CUDA events and synchronisation on GPUs).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.core.store import scratch_dir
from bench.core.threads import current_threads
from bench.timing import StepTimer, device_description


def _interleaved_medians(fns: dict, device, rounds: int, warmup: int = 1, seed: int = 0) -> dict:
    """Median seconds of each callable over ``rounds`` rounds; each round runs all of them in a
    new shuffled order, so drift and a busy neighbour weigh on every callable alike (timing one
    callable's repeats back to back and then the next one's gave ratios off by up to 10 %)."""
    import random

    rng = random.Random(seed)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            with StepTimer(device) as t:
                fns[k]()
            times[k].append(t.seconds)
    return {k: statistics.median(v) for k, v in times.items()}


def _median_time(fn, device, repeat: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeat`` timed runs after ``warmup`` untimed ones
    (``torch.utils.benchmark``, which synchronises CUDA; ratios between callables use
    :func:`_interleaved_medians` instead, which that module does not offer). Timed at the
    process' own thread count, the one a run uses (``Timer`` would otherwise set 1 thread)."""
    from torch.utils import benchmark

    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return statistics.median(timer.timeit(1).mean for _ in range(repeat))


def _priors(method_cls, labels):
    """Text priors for a synthetic run of ``method_cls``: its fixed prompt set and encoder where
    it declares them, else anatomy prompts and hash vectors."""
    from priors.cache import prior_embeddings

    spec = method_cls.text_priors
    prompts, encoder = (spec.prompts if spec else None) or "anatomy", (spec.encoder if spec else None) or "hash:512"
    return lambda: prior_embeddings(prompts, encoder, labels, use_cache=False)


def harness_overhead(method: str, preset: str, dataset, device, iterations: int = 6) -> dict:
    """Engine step vs bare step of ``method`` on the same batches (seconds per step, median).

    The run is resolved as ``bench run`` resolves it (:func:`bench.runner.resolve`: the preset,
    the method's own engine defaults), with text priors from hash vectors (no encoder weights)
    and no validation or checkpoints inside the timed steps.
    """
    from bench.runner import RunRequest, bind, make_spec, resolve
    from bench.train import Trainer
    from datasets.splits import draw_split

    p = dataset.partition
    split = draw_split(p["train"], p["eval"], p["test"], 0.2, seed=0)
    sets = {"val_every": 0, "ckpt_every": 10**9, "log_every": 10**9, "timing_warmup": 1}
    with scratch_dir("perf") as tmp:
        req = RunRequest.build({"methods": [method], "preset": preset, "iterations": iterations, "text_encoder": "hash:512"}, sets,
                               device=str(device), out=tmp, progress=False)
        (plan,) = bind(resolve(req), split, tmp)
        trainer = Trainer(make_spec(plan, dataset, split, device, progress=False))
        threads = {"engine": set(), "bare": set()}
        phase = ["engine"]
        step_fn = trainer.method.training_step

        def observed(*args):  # the thread count each step really runs at, engine and bare alike
            threads[phase[0]].add(torch.get_num_threads())
            return step_fn(*args)

        trainer.method.training_step = observed
        trainer.fit()
        engine = statistics.median(trainer.step_times)
        wait = sum(trainer.data_times) / max(sum(trainer.data_times) + sum(trainer.step_times), 1e-12)
        # bare: the same method object, batches prepared in memory beforehand
        from bench.data import TwoStreamSampler

        train = plan.train
        sampler = TwoStreamSampler(trainer.labeled, trainer.unlabeled, train.patch, train.labeled_bs, train.unlabeled_bs, 0, False)
        batches = [sampler.batch(i) for i in range(iterations)]
        batches = [({k: v.to(device) for k, v in lab.items()}, None if unl is None else {k: v.to(device) for k, v in unl.items()})
                   for lab, unl in batches]
        it = iter(range(10**9))

        def bare():  # the engine's own step object, without the loop around it
            i = next(it) % iterations
            trainer.train_step(*batches[i], iterations + i)

        phase[0] = "bare"
        bare_s = _median_time(bare, device, repeat=iterations - 1)
    return {"method": method, "engine_s": engine, "bare_s": bare_s, "overhead_ratio": engine / bare_s, "data_wait_share": wait,
            "engine_threads": sorted(threads["engine"]), "bare_threads": sorted(threads["bare"])}


def metrics_speed(repeat: int = 3) -> dict:
    """Our HD95 + ASD for every organ of a phantom case vs MONAI and medpy (same inputs)."""
    from bench.core.labels import BTCV_13
    from bench.core.metrics import case_metrics
    from datasets.phantom import generate_case

    img, gt, spacing = generate_case(BTCV_13, (40, 80, 80), 3)
    pred = np.roll(gt, 1, axis=1)  # a plausible prediction: shifted by one voxel
    c = len(BTCV_13)
    ours = lambda: case_metrics(pred, gt, spacing, c)  # noqa: E731
    ours_s = _median_time(ours, torch.device("cpu"), repeat)
    res = ours()
    out = {"ours_s": ours_s}
    try:
        from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

        p1 = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), c).permute(3, 0, 1, 2)[None].float()
        g1 = torch.nn.functional.one_hot(torch.from_numpy(gt.astype(np.int64)), c).permute(3, 0, 1, 2)[None].float()

        def monai_fn():
            hd = HausdorffDistanceMetric(include_background=False, percentile=95)(p1, g1, spacing=list(spacing))
            sd = SurfaceDistanceMetric(include_background=False, symmetric=False)(p1, g1, spacing=list(spacing))
            return hd, sd

        out["monai_s"] = _median_time(monai_fn, torch.device("cpu"), repeat)
        hd, sd = monai_fn()
        ours_hd = np.array([res[k]["hd95"] for k in range(1, c)])
        ours_asd = np.array([res[k]["asd"] for k in range(1, c)])
        ok = np.isfinite(ours_hd)
        out["monai_max_abs_diff_hd95_mm"] = float(np.max(np.abs(hd.numpy().ravel()[ok] - ours_hd[ok])))
        out["monai_max_abs_diff_asd_mm"] = float(np.max(np.abs(sd.numpy().ravel()[ok] - ours_asd[ok])))
        out["speedup_vs_monai"] = out["monai_s"] / ours_s
    except ImportError:
        pass
    try:
        from medpy.metric import binary

        def medpy_fn():
            return [(binary.hd95(pred == k, gt == k, voxelspacing=spacing), binary.asd(pred == k, gt == k, voxelspacing=spacing))
                    for k in range(1, c) if (pred == k).any() and (gt == k).any()]

        out["medpy_s"] = _median_time(medpy_fn, torch.device("cpu"), repeat, warmup=0)
        vals = medpy_fn()
        mine = [(res[k]["hd95"], res[k]["asd"]) for k in range(1, c) if (pred == k).any() and (gt == k).any()]
        out["medpy_max_abs_diff_mm"] = float(np.max(np.abs(np.array(vals) - np.array(mine))))
        out["speedup_vs_medpy"] = out["medpy_s"] / ours_s
    except ImportError:
        pass
    return out


def inference_speed(device, methods: list[str], width: int = 8, shape=(40, 80, 80), patch=(32, 64, 64), rounds: int = 7) -> dict:
    """Each method's inference vs a plain V-Net of equal width (InstanceNorm, the backbone of
    the MagicNet family): the networks' forward pass on one batch of 2 patches (the precise
    ratio of what a method's own parts add) and sliding-window inference (overlap 0.5, 2 patches
    per batch) of a volume of ``shape``, timed in interleaved rounds; and the plain V-Net at
    overlap 0.5 vs 0.25 on a volume of 2.25 patches per axis, where the two overlaps need
    different numbers of windows (on ``shape`` they often need the same)."""
    from bench.core.labels import BTCV_13
    from bench.core.registry import METHODS
    from bench.inference import predict_volume
    from methods.base import MethodContext
    from methods.networks import VNet

    nets = {}
    for name in methods:
        cls = METHODS.get(name)
        ctx = MethodContext(num_classes=14, class_names=BTCV_13, patch_size=patch, width=width, device=device,
                            priors=_priors(cls, BTCV_13))
        m = cls(ctx).to(device)
        m.train(False)
        nets[name] = m.predict
    nets["vnet"] = VNet(1, 14, width, "instancenorm").to(device).eval()
    rng = np.random.default_rng(0)
    vol = rng.random(shape, dtype=np.float32)
    t = _interleaved_medians({f"{name}_overlap0.5": (lambda fn=fn: predict_volume(fn, vol, patch, 0.5, device, sw_batch_size=2))
                              for name, fn in nets.items()}, device, rounds)
    x = torch.from_numpy(rng.random((2, 1, *patch), dtype=np.float32)).to(device)

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(x)
        return run

    # the networks alone on one batch of 2 patches: what a method's parts add, without the
    # sliding window's own costs (equal for all, but noisy: +-8 % between identical networks)
    f = _interleaved_medians({f"{name}_forward": forward(fn) for name, fn in nets.items()}, device, 3 * rounds)
    big = rng.random(tuple(int(2.25 * p) for p in patch), dtype=np.float32)
    windows = {}
    plain = nets["vnet"]

    def counted(ov):
        def fn(x):
            windows[ov] = windows.get(ov, 0) + x.shape[0]
            return plain(x)
        return fn

    for ov in (0.5, 0.25):  # the warm-up runs, counting the windows
        predict_volume(counted(ov), big, patch, ov, device, sw_batch_size=2)
    t_ov = _interleaved_medians({f"vnet_big_overlap{ov}": (lambda ov=ov: predict_volume(plain, big, patch, ov, device, sw_batch_size=2))
                                 for ov in (0.5, 0.25)}, device, max(rounds // 2, 2), warmup=0)
    ratios = {}
    for name in methods:
        ratios[f"{name}_vs_vnet_forward"] = f[f"{name}_forward"] / f["vnet_forward"]
        ratios[f"{name}_vs_vnet"] = t[f"{name}_overlap0.5"] / t["vnet_overlap0.5"]
    return {"rounds": rounds, "volume": list(shape), "big_volume": list(big.shape), "methods": list(methods),
            "windows_overlap0.5": windows[0.5], "windows_overlap0.25": windows[0.25], **t, **f, **t_ov, **ratios,
            "overlap_0.5_vs_0.25": t_ov["vnet_big_overlap0.5"] / t_ov["vnet_big_overlap0.25"]}


def synthetic_method(method: str, device, patch=(32, 64, 64), width: int = 8, labeled_bs: int = 2, unlabeled_bs: int = 2,
                     seed: int = 0):
    """A method built on a 14-class BTCV context with hash text priors, and one random batch
    (labeled image (B_l, 1, *patch) + label (B_l, *patch), unlabeled image (B_u, 1, *patch))."""
    from bench.core.labels import BTCV_13
    from bench.core.registry import METHODS
    from methods.base import MethodContext

    cls = METHODS.get(method)
    ctx = MethodContext(num_classes=14, class_names=BTCV_13, patch_size=patch, width=width, device=device, iterations=1000,
                        labeled_voxel_counts=(1e5 / (np.arange(14) + 1) ** 2).astype(np.int64), n_unlabeled=8,
                        priors=_priors(cls, BTCV_13))
    m = cls(ctx).to(device)
    g = torch.Generator().manual_seed(seed)
    lab = {"image": torch.rand(labeled_bs, 1, *patch, generator=g).to(device),
           "label": torch.randint(0, 14, (labeled_bs, *patch), generator=g).to(device)}
    unl = {"image": torch.rand(unlabeled_bs, 1, *patch, generator=g).to(device)} if unlabeled_bs else None
    return m, lab, unl


def achieved_gflops(method: str, device, patch=(32, 64, 64), width: int = 8, peak: float | None = None) -> dict:
    """FLOPs of one training step of ``method`` (``torch.utils.flop_counter``), its median time and
    the share of the assumed peak it reaches.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from bench.config import TrainConfig
    from bench.step import TrainStep, make_optimizers

    m, lab, unl = synthetic_method(method, device, patch, width)
    train_step = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.01)), device, amp=False)

    def step():
        train_step(lab, unl, 500)

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    secs = _median_time(step, device, 3)
    if peak is None:
        peak = (os.cpu_count() or 1) * 32 * 2.5 if device.type == "cpu" else float("nan")
    gf = flops / secs / 1e9
    return {"method": method, "gflop_per_step": flops / 1e9, "s_per_step": secs, "gflops": gf, "peak_gflops_assumed": peak,
            "share_of_peak": gf / peak if peak == peak else float("nan")}


def step_ratios(methods: list[str], device, patch=(32, 64, 64), width: int = 8, reference: str = "dhc", rounds: int = 5) -> dict:
    """Seconds per training step (forward, backward, the method's own optimisers) of each of
    ``methods`` and of ``reference``, as medians of interleaved rounds (:func:`_interleaved_medians`:
    every round runs each step once, in a shuffled order, so a busy neighbour weighs on all alike),
    and each method's ratio to ``reference``: ``{name: s, f"{name}_vs_{reference}": ratio}``."""
    from bench.config import TrainConfig
    from bench.step import TrainStep, make_optimizers

    fns = {}
    for name in dict.fromkeys([reference, *methods]):
        torch.manual_seed(0)
        m, lab, unl = synthetic_method(name, device, patch, width)
        ts = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.01)), device, amp=False)
        fns[name] = lambda ts=ts, lab=lab, unl=unl: ts(lab, unl, 500)
    t = _interleaved_medians(fns, device, rounds)
    return {**t, **{f"{k}_vs_{reference}": t[k] / t[reference] for k in fns}}


def execution_variants(method: str, device, patch=(32, 64, 64), width: int = 8, compile_: bool = True, repeat: int = 5) -> list[dict]:
    """Seconds per training step (forward, backward, SGD) of ``method`` with each execution
    switch on and off: AMP (bf16 where supported, CUDA only), cudnn.benchmark (CUDA only),
    ``channels_last_3d``, ``torch.compile``. Each variant builds the method afresh (same seed)
    and is timed after 2 warm-up steps (compile's first steps compile)."""
    from bench.config import TrainConfig
    from bench.step import TrainStep, make_optimizers

    cuda = device.type == "cuda"
    variants = [{"name": "baseline (fp32)"}]
    if cuda:
        variants += [{"name": "amp", "amp": True}, {"name": "amp, no cudnn.benchmark", "amp": True, "cudnn_benchmark": False}]
    last = {"amp": True} if cuda else {}
    variants += [{"name": ("amp + " if cuda else "") + "channels_last_3d", **last, "channels_last": True}]
    if compile_:
        variants += [{"name": ("amp + " if cuda else "") + "torch.compile", **last, "compile": True},
                     {"name": ("amp + " if cuda else "") + "torch.compile + channels_last_3d", **last, "compile": True,
                      "channels_last": True}]
    rows = []
    for v in variants:
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = v.get("cudnn_benchmark", True)
        m, lab, unl = synthetic_method(method, device, patch, width)
        if v.get("channels_last"):
            for net in m.modules().values():
                net.to(memory_format=torch.channels_last_3d)
            lab = {k: t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t for k, t in lab.items()}
            unl = {k: t.contiguous(memory_format=torch.channels_last_3d) for k, t in unl.items()}
        if v.get("compile"):
            for net in m.modules().values():
                net.compile()
        train_step = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.01)), device, amp=bool(v.get("amp")))

        def step(train_step=train_step, lab=lab, unl=unl):
            train_step(lab, unl, 500)

        t0 = time.perf_counter()
        try:
            secs = _median_time(step, device, repeat, warmup=2)
            rows.append({"method": method, "variant": v["name"], "s_per_step": secs, "warmup_s": time.perf_counter() - t0 - secs * repeat})
        except Exception as e:  # e.g. torch.compile without a C++ compiler: reported, not hidden
            rows.append({"method": method, "variant": v["name"], "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    torch.backends.cudnn.benchmark = True
    base = rows[0].get("s_per_step")
    for r in rows:
        if base and "s_per_step" in r:
            r["speedup"] = base / r["s_per_step"]
    return rows


def _current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def step_memory(method: str, preset: str, device) -> dict:
    """Peak memory (MiB) of two training steps of ``method`` at ``preset``'s patch, width and
    batch, in this process (call it in a fresh one: ``memory_table`` does). On CPUs: the
    process' peak RSS minus its RSS after the method and batch were built."""
    from bench.config import PRESETS, TrainConfig
    from bench.step import TrainStep, make_optimizers
    from bench.timing import peak_memory, reset_peak_memory

    t = TrainConfig(**{k: v for k, v in PRESETS[preset].train.items() if k in ("patch", "width", "lr")})
    m, lab, unl = synthetic_method(method, device, tuple(t.patch), t.width, t.labeled_bs, t.unlabeled_bs)
    train_step = TrainStep(m, make_optimizers(m, t), device, amp=True)
    before = _current_rss_mb()
    reset_peak_memory(device)
    for step in range(2):
        with StepTimer(device) as timer:
            train_step(lab, unl, 500 + step)
    peak = peak_memory(device)
    peak["second_step_s"] = timer.seconds
    if device.type != "cuda":
        peak["baseline_rss_mb"] = before
        peak["peak_memory_mb"] -= before
        peak["peak_memory_kind"] = "process_rss_increase"
    return {"method": method, "preset": preset, "patch": list(t.patch), "width": t.width,
            "batch": [t.labeled_bs, t.unlabeled_bs], **peak}


def memory_table(methods: list[str], preset: str, device_name: str, log=print, limit_gb: float | None = None) -> list[dict]:
    """``step_memory`` of each method, each in a fresh Python process (a clean peak).
    ``limit_gb`` caps each child's address space (RLIMIT_AS), so that a method too big for the
    machine fails with an allocation error instead of waking the kernel's OOM killer."""
    import resource
    import subprocess
    import sys

    def cap():
        if limit_gb:
            lim = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    rows = []
    for i, name in enumerate(methods):
        code = ("import json, torch; from bench.perf import step_memory; from bench.runner import pick_device; "
                f"print('RESULT ' + json.dumps(step_memory({name!r}, {preset!r}, pick_device({device_name!r}))))")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=cap)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            if limit_gb and any(k in tail for k in ("MemoryError", "allocate", "failed to map segment", "std::bad_alloc")):
                tail = f"needs more than the {limit_gb:g} GB address-space cap ({tail[:120]})"
            row = {"method": name, "preset": preset, "error": tail, "limit_gb": limit_gb}
            log(f"memory   {name:14s} failed: {tail}")
        else:
            row = json.loads(line[len("RESULT "):])
            log(f"memory   {name:14s} {row['peak_memory_mb']:9.0f} MiB ({row['peak_memory_kind']})  "
                f"second step {row['second_step_s']:.2f} s  ({time.perf_counter() - t0:.0f} s in all)  [{i + 1}/{len(methods)}]")
        rows.append(row)
    return rows


def run_perf(methods: list[str], preset: str, device_name: str, out: str | None, peak: float | None, log=print,
             variants: bool = False) -> dict:
    """``bench perf``: harness overhead, FLOP rate, metrics speed and inference ratios, printed and
    optionally written as JSON to ``out``; returns the measurements.
    """
    from bench.config import PRESETS
    from bench.runner import load_dataset, pick_device

    device = pick_device(device_name)
    torch.backends.cudnn.benchmark = True
    ds = load_dataset("phantom", preset, None)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device_description(device), "preset": preset,
              "torch_threads": torch.get_num_threads(), "threads": current_threads(), "harness": [], "metrics": {}, "inference": {}, "gflops": []}
    train = dict(PRESETS[preset].train)
    for name in methods:
        h = harness_overhead(name, preset, ds, device)
        result["harness"].append(h)
        log(f"harness  {name:14s} engine {h['engine_s']:.3f} s  bare {h['bare_s']:.3f} s  ratio {h['overhead_ratio']:.3f}  "
            f"data wait {100 * h['data_wait_share']:.2f}%  threads {'/'.join(map(str, h['engine_threads']))}")
        f = achieved_gflops(name, device, tuple(train.get("patch", (32, 64, 64))), train.get("width", 8), peak)
        result["gflops"].append(f)
        log(f"gflops   {name:14s} {f['gflop_per_step']:.1f} GFLOP/step  {f['gflops']:.1f} GFLOP/s  "
            f"({100 * f['share_of_peak']:.1f}% of an assumed {f['peak_gflops_assumed']:.0f})")
    result["steps"] = step_ratios(methods, device, tuple(train.get("patch", (32, 64, 64))), train.get("width", 8))
    for name in methods:
        log(f"step     {name:14s} {result['steps'][name]:.3f} s/step, {result['steps'][f'{name}_vs_dhc']:.2f}x dhc's "
            f"(medians of interleaved rounds)")
    result["metrics"] = metrics_speed()
    m = result["metrics"]
    log("metrics  ours {:.3f} s/case".format(m["ours_s"])
        + (f"  MONAI {m['monai_s']:.3f} s ({m['speedup_vs_monai']:.1f}x)" if "monai_s" in m else "")
        + (f"  medpy {m['medpy_s']:.3f} s ({m['speedup_vs_medpy']:.1f}x)" if "medpy_s" in m else ""))
    ipatch = tuple(train.get("patch", (32, 64, 64)))
    ipatch = ipatch if min(ipatch) >= 32 else (32, 64, 64)  # TAK's cubes need >= 32
    result["inference"] = inference_speed(device, methods, train.get("width", 8),
                                          shape=tuple(max(a, b) for a, b in zip(ipatch, (40, 80, 80))), patch=ipatch)
    i = result["inference"]
    for name in methods:
        log(f"infer    {name:14s} vs a plain V-Net: forward {i[f'{name}_vs_vnet_forward']:.3f}x, sliding window "
            f"{i[f'{name}_vs_vnet']:.3f}x  (medians of interleaved rounds)")
    log(f"infer    overlap 0.5/0.25 {i['overlap_0.5_vs_0.25']:.2f}x ({i['windows_overlap0.5']} vs {i['windows_overlap0.25']} windows)")
    if variants:
        result["variants"] = []
        for name in methods:
            for r in execution_variants(name, device, ipatch, train.get("width", 8)):
                result["variants"].append(r)
                log(f"variant  {name:14s} {r['variant']:40s} " + (f"{r['s_per_step']:.3f} s/step  x{r['speedup']:.2f}"
                                                                    if "s_per_step" in r else f"failed: {r['error']}"))
    if out:
        from bench.core.store import atomic_write_text

        atomic_write_text(Path(out), json.dumps(result, indent=1))
        log(f"written to {out}")
    return result
