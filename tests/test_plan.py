"""A run resolved once (bench/core/plan.py, bench.runner.resolve): typed run options, one parse
of each value, plans as plain data, the labeled share stored and grouped as a number, settings
whose modes are words a TOML file can write."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.config import RunOptions
from bench.core.errors import UserError
from bench.core.plan import RunPlan, TrainConfig
from bench.core.protocol import Protocol
from bench.core.records import SCHEMA_VERSION, ConfigRecord, MetricsRecord
from bench.runner import RunRequest, dry_run, resolve


def _plans(flags, sets=(), **kw):
    return resolve(RunRequest.build({"preset": "tiny", **flags}, list(sets), **kw))


@pytest.mark.parametrize("text", ["10%", "0.1", 0.1, "10", 10])
def test_labeled_share_is_parsed_once_into_a_number(text):
    (p,) = _plans({"methods": "supervised", "labeled": text})
    assert RunRequest.build({"methods": "supervised", "labeled": text}).options.labeled == 0.1
    assert p.split.labeled_fraction == 0.1 and p.split.identity() == {"labeled_fraction": 0.1}


def test_a_plan_is_frozen_plain_data_and_what_dry_run_prints():
    plans = _plans({"methods": "tak,supervised", "seeds": "0,1", "prompts": "anatomy", "text_encoder": "hash:64,hash:32"})
    assert [(p.method, p.priors and p.priors.text_encoder, p.seed) for p in plans] == [
        ("tak", "hash:64", 0), ("tak", "hash:64", 1), ("tak", "hash:32", 0), ("tak", "hash:32", 1),
        ("supervised", None, 0), ("supervised", None, 1)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plans[0].seed = 3  # type: ignore[misc]
    assert all(isinstance(p.protocol, Protocol) and p.device == "cpu" for p in plans)
    printed = dry_run(RunRequest.build({"preset": "tiny", "methods": "tak,supervised", "seeds": "0,1", "prompts": "anatomy",
                                        "text_encoder": "hash:64,hash:32"}))
    assert printed == [p.describe() for p in plans]
    assert json.loads(json.dumps(printed))[4]["split"] == {"labeled_fraction": 0.1}  # plain data


def test_binding_sets_hash_and_folder_and_the_hash_ignores_execution_only_settings(tmp_path):
    from datasets.splits import Split

    split = Split("s", ["a"], ["b"], ["c"], ["d"])
    (plain,) = _plans({"methods": "supervised"})
    (fast,) = _plans({"methods": "supervised"}, ["channels_last=true"])
    a, b = plain.bound(split.name, split.digest(), tmp_path), fast.bound(split.name, split.digest(), tmp_path)
    assert a.hash == b.hash and a.dir == b.dir and a.dir.parts[-3:] == ("supervised", a.hash, "seed_0")
    assert a.split.identity() == {"name": "s", "digest": split.digest()}
    (other,) = _plans({"methods": "supervised"}, ["lr=0.5"])
    assert other.bound(split.name, split.digest(), tmp_path).hash != a.hash


def test_config_json_is_the_plan_and_stores_the_share_nowhere_but_metrics(tmp_path):
    (p,) = _plans({"methods": "supervised"})
    cfg = ConfigRecord.from_dict(p.config())
    d = cfg.to_dict()
    assert "labeled_fraction" not in d and d["schema_version"] == SCHEMA_VERSION == 3
    assert d["train"]["overlap"] == "protocol" and d["protocol"]["name"] == "default"


def _metrics(frac, **kw):
    return MetricsRecord(method="m", dataset="phantom", protocol="default", protocol_version="1", split="s", seed=0, organs=["liver"],
                         per_organ={"liver": {"dice": 0.5}}, mean={"dice": 0.5}, cases={"c": {"liver": {"dice": 0.5}}},
                         labeled_fraction=frac, **kw)


def test_reports_group_by_the_number_and_read_version_1_records(tmp_path):
    from pathlib import Path

    from reports.collect import Run, share_text
    from reports.table import build_table

    v2 = Run(Path("a/h1/seed_0"), _metrics(0.1))
    # a schema-1 run: the share only in config.json (as the suite wrote it then)
    v1_cfg = ConfigRecord.from_dict({"method": "m", "dataset": "phantom", "preset": "demo", "protocol": {}, "split": {}, "hparams": {},
                                     "train": {}, "seed": 1, "labeled_fraction": 0.1, "schema_version": 1})
    v1 = Run(Path("a/h1/seed_1"), dataclasses.replace(_metrics(None), seed=1), v1_cfg)
    unknown = Run(Path("b/h2/seed_0"), dataclasses.replace(_metrics(None), method="n"))
    assert v2.labeled == v1.labeled == 0.1 and unknown.labeled == "?"
    assert share_text(0.1) == "10%" and share_text(0.025) == "2.5%" and share_text("?") == "?"
    t = build_table([v2, v1, unknown])
    assert list(t.rows["group"]) == [0.1, "?"] and list(t.n) == [2, 1]


def test_tune_names_a_study_by_the_number():
    from bench.tune import study_name_for

    names = {study_name_for("tak", RunRequest.build({"methods": "tak", "labeled": v}).options) for v in ("10%", "0.1", 10)}
    assert names == {"tak-phantom-10p"}
    assert study_name_for("tak", RunRequest.build({"methods": "tak", "labeled": "2.5%"}).options) == "tak-phantom-2.5p"
    assert study_name_for("tak", RunRequest.build({"methods": "tak", "split": "ga_10p"}).options) == "tak-phantom-ga_10p"


# -- modes spelled as words (TOML has no null) -------------------------------------------------
@pytest.mark.parametrize("key,raw,value", [
    ("overlap", "protocol", "protocol"), ("overlap", "0.5", 0.5), ("overlap", 0.0, 0.0),
    ("lr_horizon", "run", "run"), ("lr_horizon", "70000", 70000),
])
def test_engine_modes_and_numbers(key, raw, value):
    (p,) = _plans({"methods": "supervised"}, [f"{key}={raw}"])
    assert getattr(p.train, key) == value


@pytest.mark.parametrize("setting,expect", [
    ("overlap=-1", "overlap=-1: must be >= 0"), ("overlap=sometimes", "expected a number or protocol"),
    ("lr_horizon=0", "lr_horizon=0: must be >= 1"), ("tak.consistency_epoch=-1", "consistency_epoch=-1: must be >= 1"),
    ("tak.consistency_epoch=often", "expected an integer or run or unlabeled_batches or unlabeled_cases"),
])
def test_old_sentinels_are_refused_in_one_line(setting, expect):
    with pytest.raises(UserError, match=expect):
        _plans({"methods": "supervised,tak"}, [setting])


def test_modes_from_a_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('methods = ["ga"]\npreset = "tiny"\nlabeled = 0.2\n[train]\noverlap = "protocol"\nlr_horizon = 70000\n'
                   '[method.ga]\nconsistency_epoch = "run"\n')
    (p,) = resolve(RunRequest.build({}, config=str(cfg)))
    assert (p.train.overlap, p.train.lr_horizon, p.hparams["consistency_epoch"], p.split.labeled_fraction) == ("protocol", 70000, "run", 0.2)


def test_lr_horizon_run_is_the_runs_length():
    assert TrainConfig(iterations=300).horizon == 300 and TrainConfig(iterations=300, lr_horizon=70000).horizon == 70000


@pytest.mark.parametrize("mode,step,expect", [
    # "run": sigmoid_rampup(step, 1.0 x 10 iterations): 0.1 exp(-5 (1 - 5/10)^2) = 0.1 exp(-1.25)
    ("run", 5, 0.1 * 0.2865047968601901),
    # n = 10: sigmoid_rampup(50 // 10, 200) = exp(-5 (1 - 5/200)^2)
    (10, 50, 0.1 * 0.008624700856245927),
    # "unlabeled_batches": an epoch of 8 unlabeled cases / 2 per batch = 4 steps; 50 // 4 = 12: exp(-5 (1 - 12/200)^2)
    ("unlabeled_batches", 50, 0.1 * 0.012058324833811468),
    # "unlabeled_cases" (TAK): an epoch of |U| = 8 steps; 50 // 8 = 6: exp(-5 (1 - 6/200)^2)
    ("unlabeled_cases", 50, 0.1 * 0.009054440306439586),
])
def test_consistency_ramp_modes_by_hand(mode, step, expect):
    from methods.magicnet import GA
    from tests.helpers import tiny_context

    ctx = tiny_context(patch=(32, 32, 64), n_unlabeled=8, unlabeled_bs=2)
    assert ctx.iterations == 10 and ctx.epoch_length == 4
    ga = GA(ctx, consistency_epoch=mode, consistency=0.1, consistency_rampup=1.0, consistency_rampup_epochs=200.0)
    assert ga.consistency_weight(step) == pytest.approx(expect)


def test_protocol_has_no_unapplied_patch_and_options_are_their_own_layer():
    assert "patch" not in {f.name for f in dataclasses.fields(Protocol)}
    assert "released_empty_dice" not in {f.name for f in dataclasses.fields(TrainConfig)}


def test_run_options_are_typed_settings():
    from bench.core.settings import check_defaults

    check_defaults(RunOptions)
    with pytest.raises(UserError, match=r"--seeds 1,x: expected integers"):
        RunRequest.build({"methods": "supervised", "seeds": "1,x"})
    with pytest.raises(UserError, match="--methods '': expected a list of method names"):
        RunRequest.build({"methods": ""})


def test_shard_is_parsed_when_the_request_is_built():
    assert RunRequest.build({"methods": "supervised"}, shard="2/3").shard == (2, 3)
    with pytest.raises(UserError, match="--shard 4/3: i must lie in 1..n"):
        RunRequest.build({"methods": "supervised"}, shard="4/3")


def test_plan_is_in_the_core_layer():
    assert RunPlan.__module__ == "bench.core.plan" and TrainConfig.__module__ == "bench.core.plan"
