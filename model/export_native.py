"""Export a LanguageModel in its reference library's own format: fla's DeltaNet (`model_type: delta_net`) or
transformers' `MambaForCausalLM`, so users of those libraries load it without remote code.

Inside a mixer or MLP our parameter names already are the references' (fla's DeltaNet layer, transformers'
MambaMixer, fla's GatedMLP); only the block-level prefixes differ, and `PREFIXES` maps them one to one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from .config import ModelConfig

FORMATS = ("fla", "hf-mamba")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")

# (our prefix, native prefix); "{i}" stands for a layer index. Every parameter starts with exactly one.
PREFIXES = {
    "fla": (
        ("embeddings.", "model.embeddings."),
        ("norm.", "model.norm."),
        ("lm_head.", "lm_head."),
        ("layers.{i}.mixer_norm.", "model.layers.{i}.attn_norm."),
        ("layers.{i}.mixer.", "model.layers.{i}.attn."),
        ("layers.{i}.mlp_norm.", "model.layers.{i}.mlp_norm."),
        ("layers.{i}.mlp.", "model.layers.{i}.mlp."),
    ),
    "hf-mamba": (
        ("embeddings.", "backbone.embeddings."),
        ("norm.", "backbone.norm_f."),
        ("lm_head.", "lm_head."),
        ("layers.{i}.mixer_norm.", "backbone.layers.{i}.norm."),
        ("layers.{i}.mixer.", "backbone.layers.{i}.mixer."),
    ),
}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not a native format; choose one of {', '.join(FORMATS)} "
                         f"(or 'hf' for our own Hugging Face classes, which hold any model)")


def map_name(name: str, fmt: str, to_native: bool = True) -> str | None:
    """Our parameter name in format `fmt` (or a native name in ours when not to_native); None if no rule fits."""
    _check_format(fmt)
    for ours, native in PREFIXES[fmt]:
        source, target = (ours, native) if to_native else (native, ours)
        match = re.match(re.escape(source).replace(re.escape("{i}"), r"(\d+)"), name)
        if match:
            prefix = target.replace("{i}", match.group(1)) if match.groups() else target
            return prefix + name[match.end():]
    return None


def check_exportable(cfg: ModelConfig, fmt: str) -> None:
    """Raise ValueError saying why `cfg` has no equivalent in format `fmt` and which format to use instead."""
    _check_format(fmt)
    ours = "use --format hf (our own classes, loaded with trust_remote_code=True)"
    if fmt == "fla":
        if cfg.mixer != "deltanet":
            raise ValueError(f"--format fla holds DeltaNet models only, this one has model.mixer={cfg.mixer!r}; "
                             f"{ours}")
        if not cfg.mlp:
            raise ValueError(f"--format fla cannot hold model.mlp=false: fla's DeltaNet block always has an MLP; "
                             f"{ours}")
        return
    if cfg.mixer != "mamba":
        raise ValueError(f"--format hf-mamba holds Mamba models only, this one has model.mixer={cfg.mixer!r}; "
                         + ("use --format fla or --format hf" if cfg.mixer == "deltanet" else ours))
    if cfg.allow_neg_eigval:
        raise ValueError(f"--format hf-mamba cannot hold model.allow_neg_eigval=true: transformers' Mamba has no "
                         f"negative-eigenvalue switch and would compute decays in (0, 1); {ours}")
    if cfg.mlp:
        raise ValueError(f"--format hf-mamba cannot hold model.mlp=true: transformers' MambaForCausalLM has no MLP "
                         f"in its blocks; {ours}")


def native_config(cfg: ModelConfig, fmt: str, special_tokens: Mapping[str, int | None] | None = None) -> dict:
    """The config.json contents for `cfg` in format `fmt` (weights are stored in fp32)."""
    check_exportable(cfg, fmt)
    tokens = {key: None for key in TOKEN_ID_KEYS}
    unknown = set(special_tokens or {}) - set(TOKEN_ID_KEYS)
    if unknown:
        raise ValueError(f"special_tokens has unknown keys {sorted(unknown)}; allowed: {', '.join(TOKEN_ID_KEYS)}")
    tokens.update(special_tokens or {})
    if fmt == "fla":  # fla makes pad_token_id its embedding's padding_idx, whose row then never gets a gradient
        tokens["pad_token_id"] = None
    common = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
              "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": float(cfg.initializer_range),
              "use_cache": True, "dtype": "float32", **tokens}
    if fmt == "fla":
        return {
            **common,
            "architectures": ["DeltaNetForCausalLM"],
            "model_type": "delta_net",
            "attn_mode": "chunk",
            "num_heads": cfg.num_heads,
            "expand_k": float(cfg.expand_k),
            "expand_v": float(cfg.expand_v),
            "use_beta": True,
            "allow_neg_eigval": cfg.allow_neg_eigval,
            "use_short_conv": cfg.use_short_conv,
            "conv_size": cfg.conv_size,
            "use_gate": cfg.use_output_gate,
            "use_output_norm": True,
            "qk_norm": "l2",
            "qk_activation": "silu",
            "hidden_ratio": cfg.hidden_ratio,
            "intermediate_size": cfg.intermediate_size,
            "hidden_act": "swish",
            "norm_eps": float(cfg.norm_eps),
            "attn": None,
            # fla's fused norm and SwiGLU are its defaults and run wherever its DeltaNet kernels do; its fused
            # cross-entropy is a training-memory option that fails on CPU, so the plain loss is chosen
            "fuse_norm": True,
            "fuse_swiglu": True,
            "fuse_cross_entropy": False,
            "fuse_linear_cross_entropy": False,
            "use_l2warp": False,
        }
    return {
        **common,
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "state_size": cfg.state_size,
        "expand": cfg.expand,
        "intermediate_size": cfg.d_inner,
        "conv_kernel": cfg.conv_size,
        "use_bias": False,
        "use_conv_bias": cfg.mamba_conv_bias,
        "hidden_act": "silu",
        "layer_norm_epsilon": float(cfg.norm_eps),
        "residual_in_fp32": True,
        "time_step_rank": cfg.mamba_dt_rank,
        "time_step_scale": 1.0,
        "time_step_min": float(cfg.dt_min),
        "time_step_max": float(cfg.dt_max),
        "time_step_floor": float(cfg.dt_init_floor),
        "time_step_init_scheme": "random",
        "rescale_prenorm_residual": False,
    }


def native_state_dict(model: torch.nn.Module, fmt: str) -> dict[str, torch.Tensor]:
    """The model's weights under the native names, fp32 on the CPU; a tied LM head is stored once, as the
    native libraries save it."""
    tied = model.config.tie_embeddings
    state = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        native = map_name(name, fmt)
        if native is None:
            raise ValueError(f"parameter {name!r} has no name in the {fmt} format")
        state[native] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
    return state


def export_native(model: torch.nn.Module, out_dir: Path, fmt: str,
                  special_tokens: Mapping[str, int | None] | None = None) -> None:
    """Write config.json and model.safetensors for `model` (a LanguageModel) in format "fla" or "hf-mamba".

    `special_tokens` optionally sets bos_token_id / eos_token_id / pad_token_id (all null otherwise; fla's pad id
    stays null, as fla would freeze that token's embedding). The bytes depend only on the weights and settings.
    Raises ValueError before writing anything if the format cannot represent the model.
    """
    from .lm import LanguageModel

    if not isinstance(model, LanguageModel):
        raise TypeError(f"export_native needs a model.LanguageModel, got {type(model).__name__}")
    config = native_config(model.config, fmt, special_tokens)
    state = native_state_dict(model, fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
