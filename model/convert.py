"""Import a transformers Mamba or fla DeltaNet checkpoint folder as a checkpoint of ours, so a published model can
be pretrained further, typically with `model.allow_neg_eigval=true`.

    python -m model.convert --from hf-mamba|fla-deltanet SRC --out PATH [--allow-neg-eigval]

PATH then holds `step-00000000/` (config.yaml, model.safetensors, tokenizer/ when SRC has one, manifest.json) and
`latest`, which `model.from_checkpoint(PATH)` and `train.init_from=PATH` read.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
from pathlib import Path

import torch

from .config import ModelConfig
from .export_native import CONFIG_FILE, WEIGHTS_FILE, map_name

SOURCES = {"hf-mamba": "hf-mamba", "fla-deltanet": "fla"}  # --from value -> name-mapping format
MODEL_TYPES = {"hf-mamba": "mamba", "fla-deltanet": "delta_net"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja")

# The libraries' defaults (transformers' MambaConfig, fla 0.6.0's DeltaNetConfig) for keys a config.json omits.
HF_MAMBA_DEFAULTS = {
    "vocab_size": 50280, "hidden_size": 768, "state_size": 16, "num_hidden_layers": 32, "layer_norm_epsilon": 1e-5,
    "expand": 2, "conv_kernel": 4, "use_bias": False, "use_conv_bias": True, "hidden_act": "silu",
    "initializer_range": 0.1, "time_step_rank": "auto", "time_step_min": 0.001, "time_step_max": 0.1,
    "time_step_floor": 1e-4, "tie_word_embeddings": True,
}
FLA_DELTANET_DEFAULTS = {
    "hidden_size": 2048, "expand_k": 1.0, "expand_v": 1.0, "use_gate": False, "use_short_conv": True,
    "allow_neg_eigval": False, "conv_size": 4, "use_beta": True, "num_heads": 16, "qk_norm": "l2",
    "qk_activation": "silu", "hidden_ratio": 4, "intermediate_size": None, "hidden_act": "swish",
    "num_hidden_layers": 24, "norm_eps": 1e-6, "attn": None, "attnres_block_size": None,
    "tie_word_embeddings": False, "initializer_range": 0.02, "vocab_size": 32000,
}
# fla settings our DeltaNet computes only at these values; anything else is a different model
FLA_REQUIRED = {"use_beta": True, "qk_norm": "l2", "qk_activation": "silu", "hidden_act": "swish", "attn": None,
                "attnres_block_size": None}


def _refuse(where: str, key: str, value, needed) -> ValueError:
    return ValueError(f"{where}: {key}={value!r} has no equivalent in our model (it computes {key}={needed!r} "
                      f"only), so this checkpoint cannot be converted")


def model_config_from_native(raw: dict, source: str, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a transformers Mamba (`source="hf-mamba"`) or fla DeltaNet ("fla-deltanet") config."""
    if source not in SOURCES:
        raise ValueError(f"--from {source!r} is not supported; choose one of {', '.join(SOURCES)}")
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPES[source]:
        other = [s for s, t in MODEL_TYPES.items() if t == model_type]
        hint = f"; use --from {other[0]}" if other else ""
        raise ValueError(f"{where} has model_type={model_type!r} but --from {source} reads "
                         f"model_type={MODEL_TYPES[source]!r}{hint}")
    if source == "fla-deltanet":
        return _from_fla_deltanet(raw, where)
    return _from_hf_mamba(raw, where)


def _from_fla_deltanet(raw: dict, where: str) -> ModelConfig:
    c = {**FLA_DELTANET_DEFAULTS, **raw}
    for key, needed in FLA_REQUIRED.items():
        if c[key] != needed:
            raise _refuse(where, key, c[key], needed)
    ratio = 4 if c["hidden_ratio"] is None else c["hidden_ratio"]
    if c["intermediate_size"] is None and not float(ratio).is_integer():
        raise ValueError(f"{where}: hidden_ratio={ratio!r} is not a whole number; set intermediate_size in "
                         f"config.json to the MLP width the weights have")
    return ModelConfig(
        mixer="deltanet", mlp=True, allow_neg_eigval=c["allow_neg_eigval"], vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"], num_heads=c["num_heads"],
        hidden_ratio=int(ratio), intermediate_size=c["intermediate_size"],
        tie_embeddings=c["tie_word_embeddings"], norm_eps=c["norm_eps"],
        initializer_range=c["initializer_range"], expand_k=c["expand_k"], expand_v=c["expand_v"],
        use_short_conv=c["use_short_conv"], conv_size=c["conv_size"], use_output_gate=c["use_gate"],
    ).validate()


def _from_hf_mamba(raw: dict, where: str) -> ModelConfig:
    c = {**HF_MAMBA_DEFAULTS, **raw}
    if c["use_bias"]:
        raise _refuse(where, "use_bias", True, False)
    if c["hidden_act"] != "silu":
        raise _refuse(where, "hidden_act", c["hidden_act"], "silu")
    if not float(c["expand"]).is_integer():
        raise ValueError(f"{where}: expand={c['expand']!r} must be a whole number for our Mamba")
    rank, hidden = c["time_step_rank"], c["hidden_size"]
    return ModelConfig(
        mixer="mamba", mlp=False, allow_neg_eigval=False, vocab_size=c["vocab_size"], hidden_size=hidden,
        num_layers=c["num_hidden_layers"], tie_embeddings=c["tie_word_embeddings"],
        norm_eps=c["layer_norm_epsilon"], initializer_range=c["initializer_range"],
        state_size=c["state_size"], expand=int(c["expand"]),
        # our dt_rank=None means transformers' "auto", ceil(hidden / 16)
        dt_rank=None if rank in ("auto", math.ceil(hidden / 16)) else int(rank),
        dt_min=c["time_step_min"], dt_max=c["time_step_max"], dt_init_floor=c["time_step_floor"],
        mamba_conv_bias=c["use_conv_bias"], conv_size=c["conv_kernel"],
    ).validate()


def read_native_weights(src: Path) -> dict[str, torch.Tensor]:
    """A save_pretrained folder's weights: model.safetensors, a sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    def load_bin(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)

    if (src / WEIGHTS_FILE).is_file():
        return load_file(str(src / WEIGHTS_FILE))
    for index, load in (("model.safetensors.index.json", lambda p: load_file(str(p))),
                        ("pytorch_model.bin.index.json", load_bin)):
        if (src / index).is_file():
            state = {}
            for shard in sorted(set(json.loads((src / index).read_text())["weight_map"].values())):
                state.update(load(src / shard))
            return state
    if (src / "pytorch_model.bin").is_file():
        return load_bin(src / "pytorch_model.bin")
    raise ValueError(f"{src} has no weights: expected {WEIGHTS_FILE}, a sharded model.safetensors.index.json or "
                     f"pytorch_model.bin, as save_pretrained writes them")


def our_state_dict(native: dict[str, torch.Tensor], model: torch.nn.Module, fmt: str,
                   where: str) -> dict[str, torch.Tensor]:
    """Rename native weights to ours; ValueError if any is left over, missing or of the wrong shape."""
    state, unmapped = {}, []
    for name, tensor in native.items():
        ours = map_name(name, fmt, to_native=False)
        if ours is None:
            unmapped.append(name)
        else:
            state[ours] = tensor
    if model.config.tie_embeddings and "embeddings.weight" in state:
        head = state.setdefault("lm_head.weight", state["embeddings.weight"])
        if not torch.equal(head, state["embeddings.weight"]):
            raise ValueError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from the embeddings")
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(unmapped + [name for name in state if name not in expected])
    if missing or unexpected:
        raise ValueError(f"{where}: the weights do not fit the model its config.json describes: missing "
                         f"{missing[:8]}, not convertible {unexpected[:8]}")
    wrong = {name: (tuple(state[name].shape), shape) for name, shape in expected.items()
             if tuple(state[name].shape) != shape}
    if wrong:
        raise ValueError(f"{where}: weight shapes differ from what config.json describes (found vs expected): "
                         f"{dict(list(wrong.items())[:8])}")
    return state


def import_native(src: Path, source: str, allow_neg_eigval: bool = False):
    """Our LanguageModel (fp32, eval mode) with the weights of a transformers Mamba or fla DeltaNet folder;
    `allow_neg_eigval` turns the switch on without changing any weight."""
    from .lm import LanguageModel

    src = Path(src)
    config_path = src / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{src} has no {CONFIG_FILE}; --from {source} expects a folder written by save_pretrained")
    cfg = model_config_from_native(json.loads(config_path.read_text()), source, where=str(config_path))
    if allow_neg_eigval:
        cfg = dataclasses.replace(cfg, allow_neg_eigval=True)
    model = LanguageModel(cfg)
    model.load_state_dict(our_state_dict(read_native_weights(src), model, SOURCES[source], str(src)))
    return model.eval()


def convert(source: str, src: Path, out: Path, allow_neg_eigval: bool = False) -> Path:
    """Write `out/step-00000000` (and `out/latest`) holding the imported model, a full config.yaml whose
    data.tokenizer names the copied tokenizer, and a manifest; return the step directory."""
    from safetensors.torch import save_model

    from trainer.checkpoint import step_dir_name, write_checkpoint
    from trainer.config import Config, from_dict, save_config, to_dict

    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty directory; choose a new path")
    model = import_native(src, source, allow_neg_eigval)
    tokenizer_files = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    cfg = Config(out_dir=f"runs/{out.name}", model=model.config)
    if tokenizer_files:
        cfg.data.tokenizer = str(out.resolve() / step_dir_name(0) / "tokenizer")
    cfg = from_dict(to_dict(cfg))  # validated as train.py will read it

    def write(tmp: Path) -> None:
        save_config(cfg, tmp / "config.yaml")
        save_model(model, str(tmp / WEIGHTS_FILE))
        if tokenizer_files:
            (tmp / "tokenizer").mkdir()
            for name in tokenizer_files:
                shutil.copyfile(src / name, tmp / "tokenizer" / name)

    return write_checkpoint(out, step=0, tokens_seen=0, write_files=write)


def continue_command(out: Path, checkpoint: Path) -> str:
    """The train.py command that starts pretraining from the converted weights with the switch on."""
    return " ".join(["python train.py --config", shlex.quote(str(checkpoint / "config.yaml")),
                     shlex.quote(f"train.init_from={out}"), "model.allow_neg_eigval=true",
                     shlex.quote(f"out_dir=runs/{Path(out).name}")])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, choices=list(SOURCES),
                        help="hf-mamba: transformers' MambaForCausalLM; fla-deltanet: fla's DeltaNetForCausalLM")
    parser.add_argument("src", type=Path, help="the save_pretrained folder (config.json, weights, tokenizer files)")
    parser.add_argument("--out", type=Path, required=True, help="new directory for our checkpoint")
    parser.add_argument("--allow-neg-eigval", action="store_true",
                        help="write the config with model.allow_neg_eigval=true (weights unchanged)")
    args = parser.parse_args(argv)
    try:
        checkpoint = convert(args.source, args.src, args.out, args.allow_neg_eigval)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    from .loading import read_model_config

    cfg = read_model_config(checkpoint)
    lines = [f"converted {args.src} ({args.source}: {cfg.mixer}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
             f"allow_neg_eigval={str(cfg.allow_neg_eigval).lower()}) into {checkpoint}"]
    if not (checkpoint / "tokenizer").is_dir():
        lines.append(f"note: {args.src} has no tokenizer files; add data.tokenizer=<the model's tokenizer> (its "
                     f"vocabulary must fit model.vocab_size={cfg.vocab_size}) to the command below")
    lines += ["continue pretraining with eigenvalues in [-1, 1] (add data.dataset=... for your own corpus):",
              "  " + continue_command(args.out, checkpoint)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
