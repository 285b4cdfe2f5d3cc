"""The one config resolution: four levels, one scoping for files and --set, typed settings
refused before any data, --dry-run."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from bench.cli import main
from bench.config import PRESETS, TrainConfig
from bench.core.registry import METHODS
from bench.core.settings import check_defaults, convert, field_types
from bench.runner import RunRequest, dry_run, resolve


def _dry(capsys, argv) -> list[dict]:
    assert main(["run", "--dry-run", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_every_default_satisfies_its_own_type_and_range():
    check_defaults(TrainConfig)
    for name in METHODS.names():
        check_defaults(METHODS.get(name).Hparams)


@pytest.mark.parametrize("raw,annotation,rng,expect", [
    ("0.5", float, (0.0, None, 1.0, None), 0.5),
    ("32x64x64", tuple[int, int, int], None, (32, 64, 64)),
    ("on", bool, None, True),
    ("ga", typing.Literal["ga", "dice_ce"], None, "ga"),
    (3, float, None, 3.0),
])
def test_convert_hand_values(raw, annotation, rng, expect):
    assert convert("--set", "k", raw, annotation, rng) == expect


@pytest.mark.parametrize("raw,annotation,rng,expect", [
    ("1.5", float, (0.0, None, 1.0, None), "k=1.5: must be >= 0 and <= 1"),
    ("nan", float, None, "expected a number"),
    ("2.5", int, None, "expected an integer"),
    ("32,64", tuple[int, int, int], None, "expected a list like 32,64,64"),
    ("bogus", typing.Literal["ga", "dice_ce"], None, "expected one of ga, dice_ce"),
    (True, float, None, "expected a number"),
])
def test_convert_refuses_bad_values(raw, annotation, rng, expect):
    from bench.core.errors import UserError

    with pytest.raises(UserError, match=expect.replace("(", r"\(")):
        convert("--set", "k", raw, annotation, rng)


def _choice_fields():
    for name in METHODS.names():
        cls = METHODS.get(name)
        for key, t in field_types(cls.Hparams).items():
            if typing.get_origin(t) is typing.Literal:
                yield name, key, typing.get_args(t)


@pytest.mark.parametrize("method,key,choices", list(_choice_fields()), ids=lambda v: str(v))
def test_choice_hyperparameters_refused_before_any_data(method, key, choices, tmp_path, monkeypatch, capsys):
    """Every method's choice-type hyperparameter: a bad value is one line naming the allowed
    values, exit 2, with no data generated and no folder created."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    err = _err(capsys, ["run", "--methods", method, "--out", str(tmp_path / "runs"), "--set", f"{key}=bogus"])
    assert f"{key}=bogus" in err and all(str(c) in err for c in choices)
    assert not cache.exists() and not (tmp_path / "runs").exists()


def test_a_key_means_the_same_from_a_file_and_from_set(tmp_path, capsys):
    """[method] k = v (file) and --set k=v: every method that has k takes it, others are
    untouched; [method.<name>] and --set <name>.k=v: that method only."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[method]\ncontrast_weight = 0.3\n[method.dhc]\nlr = 0.05\n')
    by_file = {d["method"]: d for d in _dry(capsys, ["--methods", "tak,dhc", "--config", str(cfg)])}
    by_set = {d["method"]: d for d in _dry(capsys, ["--methods", "tak,dhc", "--set", "contrast_weight=0.3", "--set", "dhc.lr=0.05"])}
    for d in (by_file, by_set):
        assert d["tak"]["hparams"]["contrast_weight"] == 0.3 and "contrast_weight" not in d["dhc"]["hparams"]
        assert d["dhc"]["train"]["lr"] == 0.05 and d["tak"]["train"]["lr"] == 0.1  # tak: the demo preset's lr, one for all
    assert by_file == by_set


def test_levels_and_per_method_table_win_within_a_level(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "quick"\n[train]\nlr = 0.2\niterations = 7\n[method.mean_teacher]\nlr = 0.3\n')
    d = {x["method"]: x for x in _dry(capsys, ["--methods", "mean_teacher,dhc", "--config", str(cfg), "--set", "iterations=9"])}
    assert d["mean_teacher"]["train"]["lr"] == 0.3 and d["dhc"]["train"]["lr"] == 0.2  # file beats preset; own table beats [train]
    assert d["dhc"]["train"]["iterations"] == 9 and d["dhc"]["train"]["patch"] == list(PRESETS["quick"].train["patch"])


def test_a_subclass_reads_only_its_own_table(tmp_path, capsys):
    """A plugin subclass registered without the decorator (it inherits registry_name) is
    configured by the name it is registered under, never by its parent's table."""
    from methods.mean_teacher import MeanTeacher

    class Mine(MeanTeacher):
        pass

    METHODS.add("mine_mt", Mine)
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[method.mean_teacher]\nema_decay = 0.5\n[method.mine_mt]\nema_decay = 0.7\n')
        (st,) = resolve(RunRequest.build({"methods": "mine_mt"}, config=str(cfg)))
        assert st.hparams["ema_decay"] == 0.7 and st.method == "mine_mt"
    finally:
        METHODS._entries.pop("mine_mt")


@pytest.mark.parametrize("toml,expect", [
    ("[method.dhc]\ncontrast_weight = 0.1\n", "method 'dhc' has no setting 'contrast_weight'"),
    ("[method.dhcc]\nlr = 0.1\n", "unknown method 'dhcc'; did you mean 'dhc'?"),
    ("[method]\ncontrast_weigth = 0.1\n", "unknown setting"),
    ("[train]\npatch = \"abc\"\n", "[train]: patch = abc: expected a list like 32,64,64"),
    ("train = 5\n", "'train' must be a table"),
    ("method = 5\n", "'method' must be a table"),
    ("dataset_opts = \"x\"\n", "dataset_opts = x: expected a table of dataset options"),
    ("split = [1, 2]\n", "split = [1, 2]: expected a split name"),
    ("dataset = 7\n", "dataset = 7: expected a dataset name"),
    ("methods = [\"dhc\"]\nseeds = [-1]\n", "seeds = [-1]: expected integers in 0..2^31-1"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, toml, expect):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    err = _err(capsys, ["run", "--methods", "dhc", "--config", str(cfg), "--out", str(tmp_path / "runs")])
    assert expect in err, err
    assert not (tmp_path / "runs").exists()


def test_config_file_that_is_a_folder_or_not_utf8(tmp_path, capsys):
    assert "is a folder" in _err(capsys, ["run", "--config", str(tmp_path)])
    bad = tmp_path / "b.toml"
    bad.write_bytes(b"methods = [\"\xff\"]\n")
    assert "is not valid TOML" in _err(capsys, ["run", "--config", str(bad)])


def test_dry_run_reads_no_data_and_lists_every_run(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    runs = _dry(capsys, ["--methods", "tak,mean_teacher", "--seeds", "0,1", "--prompts", "anatomy,names", "--out", str(tmp_path / "o")])
    assert [(r["method"], r.get("prompts"), r["seed"]) for r in runs] == [
        ("tak", "anatomy", 0), ("tak", "anatomy", 1), ("tak", "names", 0), ("tak", "names", 1), ("mean_teacher", None, 0),
        ("mean_teacher", None, 1)]
    r = runs[0]
    assert {"method", "hparams", "train", "dataset", "protocol", "split", "seed", "prompts", "text_encoder"} <= set(r)
    assert r["split"] == {"labeled_fraction": 0.1} and r["dataset"]["name"] == "phantom"
    assert not cache.exists() and not (tmp_path / "o").exists()


def test_duplicate_methods_and_seeds_run_once():
    req = RunRequest.build({"methods": "supervised,supervised", "seeds": "0,0,1", "preset": "tiny"})
    assert req.options.methods == ("supervised",) and req.options.seeds == (0, 1)
    assert len(dry_run(req)) == 2


def test_settings_dataclasses_have_no_flag_that_is_also_a_field():
    from methods.base import Method

    flags = {k for k, v in vars(Method).items() if not k.startswith("_") and not callable(v) and not isinstance(v, (classmethod, staticmethod))}
    for name in METHODS.names():
        fields = {f.name for f in dataclasses.fields(METHODS.get(name).Hparams)}
        assert not (flags & fields), (name, flags & fields)


@pytest.mark.parametrize("preset", ["demo", "quick"])
def test_presets_give_every_method_one_learning_rate(preset):
    """demo and quick train every method at one lr (issue #19: the MagicNet family at 0.1 too)."""
    from bench.core.registry import METHODS
    from bench.runner import RunRequest, dry_run

    runs = dry_run(RunRequest.build({"methods": ",".join(METHODS.names()), "preset": preset}))
    assert {r["train"]["lr"] for r in runs} == {0.1}
    assert len({(r["train"]["iterations"], tuple(r["train"]["patch"]), r["train"]["labeled_bs"], r["train"]["unlabeled_bs"]) for r in runs}) == 1
