"""Typed run configuration: one dataclass per component, loaded from YAML plus dotted `key=value` overrides.

A YAML file may name another with `base: other.yaml` (relative to itself); its keys are merged over the base's.
Every error is a `ConfigError` that names the dotted key and says what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.config import DataConfig
from data.state_tracking.config import TaskConfig
from eval.config import HarnessConfig
from model.config import ModelConfig


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which and how to fix it."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (the peak rate and warm-up live in `train`, per the CLI contract)."""

    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    schedule: str = "cosine"  # cosine | wsd | constant
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent decaying at the end

    def validate(self) -> None:
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ValueError(f"optim.schedule={self.schedule!r}: choose cosine, wsd or constant")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        if self.eps <= 0:
            raise ValueError(f"optim.eps={self.eps} must be > 0")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction={self.decay_fraction} must be in (0, 1]")


@dataclass
class TrainConfig:
    """The step loop: batch geometry, schedule length, saving, resuming and the device."""

    max_steps: int = 1000  # sets the schedule
    stop_at_step: int | None = None  # halt cleanly after this step with a checkpoint; schedule unchanged
    max_minutes: float | None = None  # wall-time budget of this launch: halt cleanly with a checkpoint after it
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    log_every: int = 10
    save_every: int = 500
    eval_every: int = 0  # validation loss every N steps (0: only at the end)
    eval_batches: int = 8
    resume: str = "auto"  # auto | never | PATH to a checkpoint or run directory
    init_from: str | None = None  # start a new run from a checkpoint's weights only (not its optimizer or data)
    deepspeed: str | None = None  # a DeepSpeed JSON, e.g. configs/deepspeed/zero2.json; null = plain or DDP
    max_skipped_steps: int = 5  # non-finite loss/grad norm: skip the update; stop after this many in a row
    spike_sigmas: float = 6.0  # log a loss spike when the loss exceeds its running mean by this many std (0: off)
    dist_timeout_minutes: float = 30.0  # a collective waiting longer (a dead or stuck rank) fails the job
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def validate(self) -> None:
        positive = ("max_steps", "micro_batch_size", "grad_accum_steps", "seq_len", "log_every", "save_every",
                    "eval_batches")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be a positive integer")
        for name in ("warmup_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 0")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"train.warmup_steps={self.warmup_steps} exceeds train.max_steps={self.max_steps}")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.max_steps:
            raise ValueError(f"train.stop_at_step={self.stop_at_step} must be in [1, train.max_steps="
                             f"{self.max_steps}] (or null)")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr} must be > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device={self.device!r}: choose auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision={self.precision!r}: choose auto, fp32 or bf16")
        for name in ("deepspeed", "init_from"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"train.{name} is empty; set a path or null")
        if self.max_skipped_steps < 0:
            raise ValueError(f"train.max_skipped_steps={self.max_skipped_steps} must be >= 0 (0: stop at the first "
                             f"non-finite step)")
        if not self.spike_sigmas >= 0:
            raise ValueError(f"train.spike_sigmas={self.spike_sigmas} must be >= 0 (0 turns spike logging off)")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"train.max_minutes={self.max_minutes} must be > 0 (or null for no budget)")
        if not self.dist_timeout_minutes > 0:
            raise ValueError(f"train.dist_timeout_minutes={self.dist_timeout_minutes} must be > 0")
        if not self.resume:
            raise ValueError("train.resume must be auto, never or a checkpoint path")


@dataclass
class LogConfig:
    """What the run writes besides checkpoints."""

    tensorboard: bool = True
    progress_bar: bool = True
    plot: bool = True  # loss-curve PNG at the end
    keep_last_n: int | None = None  # checkpoint rotation (None keeps all)
    sample_tokens: int = 48  # greedy sample printed at the end (0: none)
    sample_prompt: str = "def "
    unigram_baseline: bool = False  # print a unigram model's validation loss for comparison

    def validate(self) -> None:
        if self.keep_last_n is not None and self.keep_last_n < 1:
            raise ValueError(f"log.keep_last_n={self.keep_last_n} must be >= 1 or null")
        if self.sample_tokens < 0:
            raise ValueError(f"log.sample_tokens={self.sample_tokens} must be >= 0")


@dataclass
class Config:
    seed: int = 0
    out_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)  # a state-tracking task instead of language modelling
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)  # lm-eval tasks during training

    def validate(self) -> None:
        if not self.out_dir:
            raise ValueError("out_dir must name a directory for the run's outputs")
        if self.task.name and self.harness.tasks:
            raise ValueError(f"harness.tasks={self.harness.tasks} needs a language-model run, but task.name="
                             f"{self.task.name!r} trains a state-tracking task; drop one of the two")


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Build a validated `Config` from a YAML file (or defaults when None) and `a.b=value` overrides."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return from_dict(raw)


def from_dict(raw: dict) -> Config:
    """Build and validate a `Config` from a nested dict (as read from a resolved config.yaml)."""
    cfg = _build(Config, raw, prefix="")
    _validate_all(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts, e.g. `model.hidden_size`."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], key + "."))
    return keys


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass --config with a YAML file "
                          f"(see configs/)")
    if path.resolve() in seen:
        raise ConfigError(f"config {str(path)!r}: circular `base:` chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, seen + (path.resolve(),))
    _merge(merged, data)
    return merged


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item or item.startswith("-"):
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value "
                          f"(e.g. model.mixer=mamba train.max_steps=100)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _unknown_key(key: str, prefix: str = "", cls: type | None = None) -> ConfigError:
    """Suggest the closest valid key: among the enclosing dataclass' fields inside a list entry such as
    data.mixture[1], else among every dotted key."""
    if cls is not None and prefix.endswith("]."):
        candidates = [prefix + f.name for f in dataclasses.fields(cls)]
    else:
        candidates = valid_keys()
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; run `python train.py --list-keys` for the valid keys"
    return ConfigError(f"{key}: unknown key{hint}")


def _build(cls: type, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in names:
            while isinstance(value, dict) and value:  # name the full dotted key: "trian.max_steps"
                key, value = f"{key}.{next(iter(value))}", next(iter(value.values()))
            raise _unknown_key(prefix + str(key), prefix, cls)
    kwargs = {}
    for name in names & set(raw):
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, raw[name] if raw[name] is not None else {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(raw[name], kind, prefix + name)
    return cls(**kwargs)


def _type_name(kind: Any) -> str:
    args = typing.get_args(kind)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))


def _coerce(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        non_null = [option for option in options if option is not type(None)]
        if value is not None and len(non_null) == 1:  # "X | None" given a value: X's own error names the key
            return _coerce(value, non_null[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(kind)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a list")
        (inner, *_) = typing.get_args(kind) or (Any,)
        return origin(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind):  # e.g. an entry of a list of sources
        return _build(kind, value, key + ".")
    if kind is type(None):
        if value is None:
            return None
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(kind)}")


def _validate_all(cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _validate_all(value, prefix + f.name + ".")
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
