"""Write a LanguageModel as a Hugging Face folder for modeling_lrnn.py: config.json with auto_map, model.safetensors,
generation_config.json and the two remote-code files; every file is byte-for-byte reproducible."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig

HERE = Path(__file__).resolve().parent
REMOTE_CODE = ("configuration_lrnn.py", "modeling_lrnn.py")
AUTO_MAP = {
    "AutoConfig": "configuration_lrnn.LRNNConfig",
    "AutoModel": "modeling_lrnn.LRNNModel",
    "AutoModelForCausalLM": "modeling_lrnn.LRNNForCausalLM",
}
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE)
# Our keys that only shape the initialisation or the training kernels: an exported model has no use for them.
_TRAINING_ONLY = {"hidden_ratio", "kernel_backend", "dt_min", "dt_max", "dt_init_floor"}
_RENAMED = {"num_layers": "num_hidden_layers", "tie_embeddings": "tie_word_embeddings"}
_RESOLVED = {"intermediate_size": "mlp_intermediate_size", "dt_rank": "mamba_dt_rank"}


def hf_config_dict(cfg: ModelConfig, special_ids: dict, dtype: torch.dtype) -> dict:
    """config.json's content for `cfg`; special_ids holds bos/eos/pad_token_id (None where unknown)."""
    from .configuration_lrnn import LRNNConfig

    fields = {_RENAMED.get(k, k): v for k, v in vars(cfg).items() if k not in _TRAINING_ONLY}
    known = {f.name for f in dataclasses.fields(LRNNConfig)}
    unknown = sorted(k for k in fields if k not in known)
    if unknown:  # a new model key the port does not implement would be silently ignored by it
        raise ValueError(f"model keys {unknown} are not supported by the Hugging Face export (model/hf/); "
                         "add them to configuration_lrnn.py and modeling_lrnn.py first")
    fields.update({key: getattr(cfg, prop) for key, prop in _RESOLVED.items()})
    config = LRNNConfig(**fields, **special_ids)
    config.architectures = ["LRNNForCausalLM"]
    config.auto_map = AUTO_MAP
    config.dtype = str(dtype).removeprefix("torch.")
    return json.loads(config.to_json_string(use_diff=False))


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameter names under LRNNForCausalLM's: everything but the LM head moves under `model.`; a head tied
    to the embeddings is stored once, as transformers expects."""
    tied = model.config.tie_embeddings
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if not tied:
                state[name] = tensor
            continue
        state[f"model.{name}"] = tensor
    return {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}


def write_hf_model(model: torch.nn.Module, out: Path, special_ids: dict) -> None:
    """Write every file in HF_FILES into the existing directory `out`."""
    state = hf_state_dict(model)
    dtype = next(iter(state.values())).dtype
    config = hf_config_dict(model.config, special_ids, dtype)
    _write_json(out / "config.json", config)
    generation = {key: special_ids.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    generation["transformers_version"] = config["transformers_version"]
    _write_json(out / "generation_config.json", generation)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in REMOTE_CODE:
        shutil.copyfile(HERE / name, out / name)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
