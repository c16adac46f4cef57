"""Model configuration: one dataclass for every mixer, validated with messages that name the dotted key."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

MIXERS = ("deltanet", "mamba", "attention", "lstm")
KERNEL_BACKENDS = ("auto", "torch", "naive", "triton", "fla")


def _choice_error(key: str, value, allowed: tuple[str, ...]) -> ValueError:
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}{hint}")


@dataclass
class ModelConfig:
    """Architecture of the language model; `mixer` picks the sequence layer of every block."""

    mixer: str = "deltanet"
    allow_neg_eigval: bool = False
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp: bool = True
    hidden_ratio: int = 4
    intermediate_size: int | None = None
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    kernel_backend: str = "auto"
    # deltanet
    expand_k: float = 1.0
    expand_v: float = 1.0
    use_short_conv: bool = True
    conv_size: int = 4
    use_output_gate: bool = False
    # mamba
    state_size: int = 16
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    mamba_conv_bias: bool = True
    # attention
    rope_theta: float = 10000.0

    @property
    def mlp_intermediate_size(self) -> int:
        """fla's GatedMLP rule: 2/3 of hidden * hidden_ratio, rounded up to a multiple of 256."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((size + 255) // 256)

    @property
    def key_dim(self) -> int:
        return round(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return round(self.hidden_size * self.expand_v)

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def mamba_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.hidden_size / 16)

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the first bad key (`model.<field>`); return self when all is well."""
        if self.mixer not in MIXERS:
            raise _choice_error("model.mixer", self.mixer, MIXERS)
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise _choice_error("model.kernel_backend", self.kernel_backend, KERNEL_BACKENDS)
        if self.kernel_backend == "fla" and self.mixer == "mamba":
            raise ValueError("model.kernel_backend='fla' works only with model.mixer='deltanet' (fla has no selective "
                             "scan); for model.mixer='mamba' choose auto, torch, naive or triton")
        for key in ("allow_neg_eigval", "mlp", "tie_embeddings", "use_short_conv", "use_output_gate",
                    "mamba_conv_bias"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key}={getattr(self, key)!r} must be true or false")
        positive_ints = ["vocab_size", "hidden_size", "num_layers", "num_heads", "hidden_ratio", "conv_size",
                         "state_size", "expand"]
        positive_ints += [k for k in ("intermediate_size", "dt_rank") if getattr(self, k) is not None]
        for key in positive_ints:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{key}={value!r} must be a positive integer")
        for key in ("norm_eps", "initializer_range", "expand_k", "expand_v", "dt_min", "dt_max", "dt_init_floor",
                    "rope_theta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"model.{key}={value!r} must be a positive number")
        if self.dt_min > self.dt_max:
            raise ValueError(f"model.dt_min={self.dt_min} must not exceed model.dt_max={self.dt_max}")
        if self.mixer == "deltanet":
            self._validate_deltanet()
        if self.mixer == "attention":
            if self.hidden_size % self.num_heads:
                raise ValueError(f"model.hidden_size={self.hidden_size} must be divisible by "
                                 f"model.num_heads={self.num_heads}")
            if (self.hidden_size // self.num_heads) % 2:
                raise ValueError(f"model.hidden_size / model.num_heads = {self.hidden_size // self.num_heads} "
                                 "must be even for rotary position embeddings")
        return self

    def _validate_deltanet(self) -> None:
        for key, ratio in (("expand_k", self.expand_k), ("expand_v", self.expand_v)):
            dim = self.hidden_size * ratio
            if not math.isclose(dim, round(dim)):
                raise ValueError(f"model.hidden_size * model.{key} = {dim} must be an integer")
            if round(dim) % self.num_heads:
                what = "model.hidden_size" if ratio == 1 else f"model.hidden_size * model.{key}"
                raise ValueError(f"{what}={round(dim)} must be divisible by model.num_heads={self.num_heads}")
