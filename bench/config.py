"""The one config resolution: run options, engine settings and method hyperparameters.

Four levels, lowest first::

    defaults  <  preset  <  config file (TOML)  <  command line (flags and --set)

*Defaults* are the dataclass defaults of :class:`TrainConfig` and of each method's ``Hparams``,
plus the engine settings a method declares as its own (``Method.train_defaults``: what its
released code uses). A *preset* (``PRESETS``), a *config file* and the *command line* are each
one :class:`Layer` with the same scoping, so a key means the same wherever it is written:

======================================  ============================================
config file                             command line
======================================  ============================================
top level ``methods = [...]``, ...      ``--methods``, ``--dataset``, ... flags
``[train] lr = 0.02``                   ``--set lr=0.02``        (every method)
``[method] ema_decay = 0.9``            ``--set ema_decay=0.9``  (every method that has it)
``[method.tak] lr = 0.03``              ``--set tak.lr=0.03``    (that method only)
``[protocol_options] key = true``       ``--set released_empty_dice=true`` (the run's protocol)
======================================  ============================================

Within a level the per-method table wins over the shared keys. A key no method of the run
knows, a table of an unknown method, or a value of the wrong type or range is one line naming
it and what is allowed, before any data is read. Every setting is typed
(:mod:`bench.core.settings`): run options (:class:`RunOptions`), engine settings
(:class:`bench.core.plan.TrainConfig`), hyperparameters (``Method.Hparams``) and protocol options
(:class:`bench.core.protocol.ProtocolOptions`).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from bench.core.errors import UserError
from bench.core.plan import EXECUTION_ONLY, TrainConfig
from bench.core.protocol import ProtocolOptions
from bench.core.settings import NAMES, SEEDS, SHARE, convert, convert_field, describe_type, field_types, setting, split_names

#: the preset used when none is given
DEFAULT_PRESET = "demo"
#: the labeled share of the training cases when neither --labeled nor --split is given
DEFAULT_LABELED = "10%"


@dataclass(frozen=True)
class Preset:
    """A named preset: the phantom size and engine settings, the same for every method."""

    dataset_preset: str
    train: dict[str, Any] = field(default_factory=dict)


#: Presets (docs/performance.md has the measured times). ``demo``: the no-flag default, sized
#: for about 9 minutes of ``tak,dhc,mean_teacher`` on 2 CPU cores (too short for TAK's flat start on
#: some seeds: docs/performance.md); ``quick``: the figure
#: protocol of docs/results.md (a 0.1 learning rate lets a width-8 V-Net learn the phantom in a
#: few hundred steps; 32x64x64 is the smallest patch MagicNet-style methods can cut into
#: cubes); ``paper``: the published scale; ``tiny``: smoke runs and tests, every method (32x32x64 is
#: the smallest patch the MagicNet family cuts into cubes).
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", {"iterations": 4, "patch": (32, 32, 64), "width": 4, "val_every": 2, "ckpt_every": 2,
                            "log_every": 1, "timing_warmup": 1}),
    "demo": Preset("quick", {"iterations": 220, "lr": 0.1, "patch": (32, 32, 64), "width": 8, "val_every": 100, "ckpt_every": 50}),
    "quick": Preset("quick", {"iterations": 600, "lr": 0.1, "patch": (32, 64, 64), "width": 8, "val_every": 100, "ckpt_every": 50}),
    "paper": Preset("paper", {"iterations": 30000, "patch": (96, 96, 96), "width": 16, "val_every": 1000, "ckpt_every": 500,
                              "log_every": 50}),
}


def train_fields() -> dict[str, dataclasses.Field]:
    """The fields of :class:`TrainConfig` by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


# -- run options ---------------------------------------------------------------------------
@dataclass
class RunOptions:
    """What to run (the top level of a config file, and the flags of ``bench run``), typed like
    every other setting (:mod:`bench.core.settings`): defaults < config file < command line."""

    methods: Annotated[tuple[str, ...], NAMES] = setting(what="a list of method names")
    dataset: str = setting("phantom", what="a dataset name")
    data_root: str | None = setting(None, what="a folder")
    #: the dataset factory's options (``--dataset-opt key=value``); merged key by key over layers
    dataset_opts: dict[str, Any] = setting(default_factory=dict, what="a table of dataset options")
    #: a label map name or file for foreign label values (a dataset option of its own)
    label_map: str | None = setting(None, what="a label map name or file")
    protocol: str = setting("default", what="a protocol name")
    #: a split name (yours or published) or a JSON file; None: drawn with ``labeled``
    split: str | None = setting(None, what="a split name or JSON file")
    #: the labeled share of a drawn split, a number (``"10%"`` and ``0.1`` both give 0.1)
    labeled: Annotated[float, SHARE] = 0.1
    seeds: Annotated[tuple[int, ...], SEEDS] = (0,)
    preset: str = setting(DEFAULT_PRESET, what="a preset name")
    prompts: Annotated[tuple[str, ...], NAMES] = setting(("anatomy",), what="a list of prompt set names")
    text_encoder: Annotated[tuple[str, ...], NAMES] = setting(("minilm",), what="a list of text encoder names")


def run_option_names() -> list[str]:
    """The run options (the top-level keys of a config file)."""
    return [f.name for f in dataclasses.fields(RunOptions)]


# -- layers --------------------------------------------------------------------------------
@dataclass
class Layer:
    """What one level (a preset, a config file, the command line) says."""

    origin: str
    #: run options (:class:`RunOptions`), typed
    run: dict[str, Any] = field(default_factory=dict)
    #: protocol options (:class:`bench.core.protocol.ProtocolOptions`), raw
    protocol: dict[str, Any] = field(default_factory=dict)
    #: engine settings for every method
    train: dict[str, Any] = field(default_factory=dict)
    #: settings for every method that has them (method hyperparameters, or engine settings)
    shared: dict[str, Any] = field(default_factory=dict)
    #: {method name: {engine setting or hyperparameter: value}}
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where and how cells run (``[executor]``; typed by :class:`bench.executors.ExecutorOptions`)
    executor: dict[str, Any] = field(default_factory=dict)

    def where(self, part: str, method: str | None = None) -> str:
        if self.origin.startswith("config"):
            return f"{self.origin} " + {"train": "[train]", "shared": "[method]", "protocol": "[protocol_options]"}.get(
                part, f"[method.{method}]")
        if self.origin == "command line":
            return "--set"
        return f"{self.origin}" + (f" [method.{method}]" if method else "")


def _did_you_mean(word: str, choices) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def preset_layer(name: str) -> Layer:
    """A preset's engine settings as a config layer.

    Raises:
        UserError: an unknown preset (with the close names).
    """
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; {_did_you_mean(name, PRESETS)}choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return Layer(f"preset {name}", train=dict(p.train))


def parse_set(items: list[str], flag: str = "--set") -> dict[str, str]:
    """``key=value`` items (``--set``, ``--dataset-opt``) as a dict of strings.

    Raises:
        UserError: an item without ``=`` or key.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} '{item}' is not key=value; write e.g. {flag} {'lr=0.02' if flag == '--set' else 'modality=ct'}")
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed TOML document (read once); a missing, unreadable or invalid file is one line."""
    from bench.core.store import check_depth, read_bounded

    p = Path(path)
    try:
        return check_depth(tomllib.loads(read_bounded(p, f"config file {p}").decode("utf-8")), f"config file {p}")
    except RecursionError:
        raise UserError(f"config file {p} nests too deeply; it is not a config this suite reads")
    except FileNotFoundError:
        raise UserError(f"config file {p} does not exist; check the path given to --config")
    except IsADirectoryError:
        raise UserError(f"config file {p} is a folder; give a .toml file to --config")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid TOML ({' '.join(str(e).split())[:120]})")
    except OSError as e:
        raise UserError(f"config file {p} cannot be read ({e.strerror}); check its permissions")


def file_layer(path: str | Path) -> Layer:
    """A config file as one layer (the file is read here, once)."""
    origin = f"config {path}"
    doc = load_config_file(path)
    layer = Layer(origin)
    for key, value in doc.items():
        if key == "train":
            if not isinstance(value, dict):
                raise UserError(f"{origin}: 'train' must be a table ([train] with settings such as lr = 0.01)")
            layer.train = dict(value)
        elif key == "method":
            if not isinstance(value, dict):
                raise UserError(f"{origin}: 'method' must be a table ([method] or [method.<name>] with hyperparameters)")
            for k, v in value.items():
                if isinstance(v, dict):
                    layer.per_method[k] = dict(v)
                else:
                    layer.shared[k] = v
        elif key == "protocol_options":
            if not isinstance(value, dict):
                raise UserError(f"{origin}: 'protocol_options' must be a table ([protocol_options] with e.g. released_empty_dice = true)")
            layer.protocol = dict(value)
        elif key == "executor":
            if not isinstance(value, dict):
                raise UserError(f"{origin}: 'executor' must be a table ([executor] with e.g. name = \"slurm\", partition = \"gpu\")")
            layer.executor = dict(value)
        elif key in run_option_names():
            layer.run[key] = convert_field(origin, RunOptions, key, value)
        else:
            known = sorted([*run_option_names(), "train", "method", "protocol_options", "executor"])
            raise UserError(f"{origin}: unknown key '{key}'; {_did_you_mean(key, known)}known: {', '.join(known)}")
    return layer


def cli_layer(flags: dict[str, Any], sets: list[str] | dict[str, Any]) -> Layer:
    """Command-line flags (run options, ``iterations``) and ``--set`` as one layer.

    ``sets`` is a list of ``key=value`` strings or an already typed ``{key: value}`` (tuning).
    ``name.key`` addresses one method when ``name`` is a registered method.
    """
    from bench.core.registry import METHODS

    layer = Layer("command line")
    for key, value in flags.items():
        if value is None:
            continue
        if key == "iterations":
            layer.train["iterations"] = value
        else:
            layer.run[key] = convert_field(f"--{key.replace('_', '-')}", RunOptions, key, value)
    items = parse_set(sets) if isinstance(sets, list) else dict(sets)
    engine = train_fields()
    protocol = {f.name for f in dataclasses.fields(ProtocolOptions)}
    registered = set(METHODS.names())
    for key, value in items.items():
        prefix, dot, sub = key.partition(".")
        if key in protocol:
            layer.protocol[key] = value
        elif dot and prefix in registered:
            layer.per_method.setdefault(prefix, {})[sub] = value
        elif dot:
            raise UserError(f"--set {key}: '{prefix}' is not a method; {_did_you_mean(prefix, sorted(registered))}"
                            f"write --set <method>.<key>=value (see `python -m bench list methods`)")
        elif key in engine:
            layer.train[key] = value
        else:
            layer.shared[key] = value
    return layer


def resolve_options(layers: list[Layer]) -> RunOptions:
    """Run options: defaults < config file < command-line flags (presets hold none).

    Raises:
        UserError: no method, or an unknown preset.
    """
    values: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for layer in layers:
        opts.update(layer.run.get("dataset_opts", {}))  # dataset options merge key by key
        values.update(layer.run)
    if values.get("label_map"):  # a label map is one of the dataset's options
        opts["label_map"] = values["label_map"]
    values["dataset_opts"] = opts
    if not values.get("methods"):
        raise UserError("no method given; e.g. --methods supervised,mean_teacher (see `python -m bench list methods`)")
    out = RunOptions(**values)
    preset_layer(out.preset)  # an unknown preset fails here, with the known ones
    return out


def resolve_protocol_options(layers: list[Layer]) -> ProtocolOptions:
    """The run's protocol options: defaults < config file ``[protocol_options]`` < ``--set``."""
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.protocol.items():
            if k not in {f.name for f in dataclasses.fields(ProtocolOptions)}:
                known = ", ".join(f.name for f in dataclasses.fields(ProtocolOptions))
                raise UserError(f"{layer.where('protocol')}: unknown protocol option '{k}'; known: {known}")
            values[k] = convert_field(layer.where("protocol"), ProtocolOptions, k, v)
    return ProtocolOptions(**values)


# -- per-method resolution -----------------------------------------------------------------
@dataclass
class MethodSettings:
    """Resolved settings of one method in a run: engine config and method hyperparameters."""

    name: str
    train: TrainConfig
    #: every hyperparameter of the method (defaults included), typed
    hparams: dict[str, Any]


def _hparam_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls.Hparams)}


def check_keys(layers: list[Layer], classes: dict[str, Any]) -> None:
    """Every key of every layer means something for this run (before any method resolves)."""
    from bench.core.registry import METHODS

    engine = train_fields()
    all_hp = {k for c in classes.values() for k in _hparam_fields(c)}
    for layer in layers:
        for k in layer.train:
            if k not in engine:
                raise UserError(f"{layer.where('train')}: unknown engine setting '{k}'; "
                                f"{_did_you_mean(k, engine)}known: {', '.join(sorted(engine))}")
        for k in layer.shared:
            if k not in engine and k not in all_hp:
                raise UserError(f"{layer.where('shared')} {k}: unknown setting (no engine setting, and no method of this run - "
                                f"{', '.join(classes)} - has it); {_did_you_mean(k, sorted(set(engine) | all_hp))}"
                                f"see `python -m bench list methods --details`")
        for name, table in layer.per_method.items():
            if name not in classes:  # a table for a method this run does not train: the name must exist
                if name not in METHODS:
                    raise UserError(f"{layer.where('per_method', name)}: unknown method '{name}'; "
                                    f"{_did_you_mean(name, METHODS.names())}see `python -m bench list methods`")
                continue
            hp = _hparam_fields(classes[name])
            for k in table:
                if k not in engine and k not in hp:
                    raise UserError(f"{layer.where('per_method', name)}: method '{name}' has no setting '{k}'; "
                                    f"{_did_you_mean(k, sorted(set(engine) | set(hp)))}"
                                    f"its hyperparameters: {', '.join(sorted(hp)) or 'none'}")


def resolve_method(name: str, cls: Any, layers: list[Layer]) -> MethodSettings:
    """Engine settings and hyperparameters of method ``name`` (its registry name, given
    explicitly: a subclass reads only its own ``[method.<name>]`` table)."""
    engine = train_fields()
    hp_fields = _hparam_fields(cls)
    train: dict[str, Any] = {f.name: f.default for f in engine.values()}
    for k, v in cls.train_defaults.items():
        train[k] = convert_field(f"method {name} default", TrainConfig, k, v)
    hparams: dict[str, Any] = dict(cls.hparam_defaults())

    def put(where: str, key: str, raw: Any) -> None:
        if key in engine:
            train[key] = convert_field(where, TrainConfig, key, raw)
        elif key in hp_fields:
            hparams[key] = convert_field(where, cls.Hparams, key, raw)

    for layer in layers:
        for k, v in layer.train.items():
            put(layer.where("train"), k, v)
        for k, v in layer.shared.items():
            put(layer.where("shared"), k, v)
        for k, v in layer.per_method.get(name, {}).items():
            put(layer.where("per_method", name), k, v)
    t = TrainConfig(**train)
    _check_train(t)
    cls.check_settings(cls.Hparams(**hparams), t)
    return MethodSettings(name=name, train=t, hparams=hparams)


def _check_train(t: TrainConfig) -> None:
    if len(t.patch) != 3 or any(p <= 0 or p % 16 for p in t.patch):
        raise UserError(f"patch {'x'.join(map(str, t.patch))} must be three positive multiples of 16 (the V-Net halves it "
                        f"four times); e.g. --set patch=32,64,64")


def describe_hparams(cls: Any) -> str:
    """``name=default (type)`` of each hyperparameter, for ``bench list methods --details``."""
    types = field_types(cls.Hparams)
    out = []
    for f in dataclasses.fields(cls.Hparams):
        t = types[f.name]
        kind = describe_type(t) if getattr(t, "__origin__", None) is Literal else ""
        out.append(f"{f.name}={f.default!r}" + (f" ({kind})" if kind else ""))
    return ", ".join(out)


__all__ = ["DEFAULT_LABELED", "DEFAULT_PRESET", "EXECUTION_ONLY", "PRESETS", "Layer", "MethodSettings", "Preset",
           "RunOptions", "TrainConfig", "check_keys", "cli_layer", "convert", "file_layer", "load_config_file",
           "parse_set", "preset_layer", "resolve_method", "resolve_options", "resolve_protocol_options", "run_option_names",
           "split_names", "train_fields"]
