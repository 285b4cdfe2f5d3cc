"""Run configuration: engine hyperparameters, presets, config files and ``--set`` overrides.

Precedence, lowest first: dataclass defaults < method's ``train_defaults`` < preset <
method's ``preset_train[preset]`` < config file (TOML) < command-line flags < ``--set key=value``.

``preset_train`` lets a method correct a preset where the preset's shortcut does not suit it:
the quick preset's 0.1 learning rate trains plain V-Nets in 600 steps but makes the
InstanceNorm MagicNet family (magicnet, ga, tak) diverge, so those declare their own.

A TOML config file may hold run options at the top level (``methods``, ``dataset``,
``seeds``, ``labeled``, ...), engine hyperparameters under ``[train]`` and method
hyperparameters under ``[method.<name>]`` (or ``[method]`` for all methods of the run).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import UserError


@dataclass
class TrainConfig:
    """Engine hyperparameters (the same loop for every method)."""

    iterations: int = 600
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    poly_power: float = 0.9
    labeled_bs: int = 2
    unlabeled_bs: int = 2
    patch: tuple[int, int, int] = (32, 64, 64)
    width: int = 8
    grad_clip: float = 0.0
    amp: bool = True
    val_every: int = 100
    val_overlap: float = 0.25
    overlap: float = -1.0  # test-time sliding-window overlap; < 0 = the protocol's
    sw_batch_size: int = 2
    ckpt_every: int = 50
    log_every: int = 10
    timing_warmup: int = 5
    #: random flips along H and W. Off by default: a left-right flip turns the right kidney
    #: into a "left" one at the wrong side, and on the phantom it cut validation Dice after 400
    #: iterations from 0.26 to 0.07 (DHC's protocol flips; its config turns this on)
    flip: bool = False
    #: execution only (not part of a run's identity, see ``EXECUTION_ONLY``): compile every
    #: network with ``torch.compile`` / keep activations in ``channels_last_3d`` memory format
    compile: bool = False
    channels_last: bool = False


#: engine settings that change how fast a run goes, not what it computes: kept out of the
#: config hash (a run resumed with them switched keeps its folder), recorded in config.json
EXECUTION_ONLY = ("compile", "channels_last")


#: Presets set the phantom size and engine defaults; config files and flags override them.
#: the preset used when none is given
DEFAULT_PRESET = "demo"

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset_preset": "tiny",
        "train": {"iterations": 4, "patch": (16, 32, 32), "width": 4, "val_every": 2, "ckpt_every": 2,
                  "log_every": 1, "timing_warmup": 1},
    },
    # demo: the no-flag default, sized so that `bench run --methods tak,dhc,mean_teacher` takes
    # about 10 minutes on 2 CPU cores (docs/performance.md); the quick phantom, half quick's
    # patch (32x32x64: 2 MagicNet cubes of 32) and 220 iterations (300 took 10:38 on a quiet
    # 2-core CPU, 270 took 11:04 in a later measurement).
    "demo": {
        "dataset_preset": "quick",
        "train": {"iterations": 220, "lr": 0.1, "patch": (32, 32, 64), "width": 8, "val_every": 100,
                  "ckpt_every": 50},
    },
    # quick: the figure protocol of the closing notes, about an hour for tak,dhc,mean_teacher on
    # 2 CPU cores. A 0.1 learning rate (published: 0.01 over 30k+ iterations)
    # lets a width-8 V-Net learn the phantom in a few hundred iterations. 32x64x64 is the
    # smallest patch that MagicNet-style methods can cut into cubes (2x2 cubes of 32).
    "quick": {
        "dataset_preset": "quick",
        "train": {"iterations": 600, "lr": 0.1, "patch": (32, 64, 64), "width": 8, "val_every": 100,
                  "ckpt_every": 50},
    },
    "paper": {
        "dataset_preset": "paper",
        "train": {"iterations": 30000, "patch": (96, 96, 96), "width": 16, "val_every": 1000,
                  "ckpt_every": 500, "log_every": 50},
    },
}


def train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def coerce(key: str, raw: Any, default: Any, annotation: Any = None) -> Any:
    """Convert ``raw`` (string from the CLI or a TOML value) to the type of ``default``."""
    kind = type(default) if default is not None else None
    if annotation is not None and kind is None:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        kind = args[0] if args else annotation
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        elif kind is int:
            if not isinstance(raw, bool) and not (isinstance(raw, float) and not raw.is_integer()):
                return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        elif kind is float:
            if not isinstance(raw, bool):
                return float(raw)
        elif kind is tuple:
            items = raw if isinstance(raw, (list, tuple)) else str(raw).replace("x", ",").split(",")
            inner = type(default[0]) if default else int
            return tuple(inner(str(v).strip()) for v in items)
        elif kind is str:
            if isinstance(raw, (str, int, float)):
                return str(raw)
        else:
            return raw
    except (ValueError, TypeError):
        pass
    want = {bool: "true/false", int: "an integer", float: "a number", tuple: "a list like 32,64,64", str: "text"}.get(kind, str(kind))
    raise UserError(f"--set {key}={raw}: expected {want} (default {default!r})")


def parse_set(items: list[str], flag: str = "--set") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} '{item}' is not key=value; write e.g. {flag} {'lr=0.02' if flag == '--set' else 'modality=ct'}")
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {p} does not exist; check the path given to --config")
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {p} is not valid TOML ({e})")


@dataclass
class MethodSettings:
    """Resolved settings of one method in a run: engine config and method hyperparameters."""

    train: TrainConfig
    hparams: dict[str, Any] = field(default_factory=dict)


def resolve(
    method_cls: Any,
    preset: str,
    file_cfg: dict[str, Any],
    cli_train: dict[str, Any],
    sets: dict[str, str],
    all_method_classes: list[Any],
) -> MethodSettings:
    """Resolve engine and method settings for one method (see module docstring)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    tf = train_fields()
    values: dict[str, Any] = {f.name: f.default for f in tf.values()}
    hp_defaults = method_cls.hparam_defaults()
    hp_fields = {f.name: f for f in dataclasses.fields(method_cls.Hparams)}
    hparams: dict[str, Any] = {}

    def apply_train(src: dict[str, Any], origin: str) -> None:
        for k, v in src.items():
            if k not in tf:
                raise UserError(f"{origin}: unknown engine setting '{k}'; known: {', '.join(sorted(tf))}")
            values[k] = coerce(k, v, tf[k].default)

    def put(key: str, raw: Any) -> bool:
        """Route one setting to the engine or the method; False if neither knows it."""
        if key in tf:
            values[key] = coerce(key, raw, tf[key].default)
        elif key in hp_fields:
            hparams[key] = coerce(key, raw, hp_defaults.get(key), hp_fields[key].type)
        else:
            return False
        return True

    values.update(getattr(method_cls, "train_defaults", {}) or {})
    apply_train(PRESETS[preset]["train"], f"preset {preset}")
    apply_train((getattr(method_cls, "preset_train", {}) or {}).get(preset, {}), f"method {method_cls.registry_name}, preset {preset}")
    apply_train(file_cfg.get("train", {}), "config [train]")
    tables = file_cfg.get("method", {})
    # [method] with plain keys applies to every method; [method.<name>] to one
    shared = {k: v for k, v in tables.items() if not isinstance(v, dict)}
    own = tables.get(method_cls.registry_name, {})
    for k, v in {**shared, **(own if isinstance(own, dict) else {})}.items():
        if not put(k, v):
            raise UserError(f"config [method.{method_cls.registry_name}]: unknown hyperparameter '{k}'")
    apply_train(cli_train, "command line")
    for k, v in sets.items():
        if put(k, v):
            continue
        if "." in k and k.split(".", 1)[0] in {c.registry_name for c in all_method_classes}:
            name, sub = k.split(".", 1)
            if name == method_cls.registry_name:
                if sub not in hp_fields:
                    raise UserError(f"--set {k}: method '{name}' has no hyperparameter '{sub}'; known: {', '.join(sorted(hp_fields))}")
                hparams[sub] = coerce(k, v, hp_defaults.get(sub), hp_fields[sub].type)
        elif not any(k in {f.name for f in dataclasses.fields(c.Hparams)} for c in all_method_classes):
            known = sorted(set(tf) | {f.name for c in all_method_classes for f in dataclasses.fields(c.Hparams)})
            import difflib

            close = difflib.get_close_matches(k, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"--set {k}: unknown setting; {hint}see `python -m bench list methods --details` for hyperparameters")
    train = TrainConfig(**values)
    _check_train(train)
    return MethodSettings(train=train, hparams=hparams)


def _check_train(t: TrainConfig) -> None:
    if t.iterations < 1:
        raise UserError(f"iterations must be >= 1 (got {t.iterations})")
    if len(t.patch) != 3 or any(p <= 0 or p % 16 for p in t.patch):
        raise UserError(f"patch {t.patch} must be three positive multiples of 16 (the V-Net halves it four times)")
    if t.width < 1:
        raise UserError(f"width must be >= 1 (got {t.width})")
    if t.labeled_bs < 1 or t.unlabeled_bs < 0:
        raise UserError("labeled_bs must be >= 1 and unlabeled_bs >= 0")
    if not (0 <= t.val_overlap < 1) or not (t.overlap < 1):
        raise UserError("sliding-window overlap must lie in [0, 1)")
