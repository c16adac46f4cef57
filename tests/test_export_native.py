"""Native-format export: fla loads our DeltaNet (either eigenvalue range) and transformers our Mamba [0, 1] as their
own classes, with our logits; every parameter maps one to one; what a format cannot hold is refused."""
import json

import pytest
import torch
from safetensors.torch import load_file

from model import LanguageModel, ModelConfig
from model.export_native import CONFIG_FILE, FORMATS, WEIGHTS_FILE, export_native, map_name

# fp32 throughout; the libraries run the same maths in another order (fla: its fused recurrent Triton kernel under
# the interpreter; transformers: a sequential scan), so differences are roundoff (measured 1e-8 to 8e-7). 1e-5
# fails on any real mismatch.
TOL = 1e-5
VOCAB = 64


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


@pytest.fixture(scope="module")
def fla_on_cpu():
    """fla's Triton kernels run on the CPU interpreter once its autotuners stop benchmarking (which needs a GPU
    driver): each keeps its first config. A test-only patch.

    Importing fla registers its models with transformers' Auto classes, and its own Mamba under model_type "mamba",
    which would load transformers' Mamba folders with fla's code for the rest of the session; transformers' own
    registration is put back.
    """
    from transformers import AutoConfig, MambaConfig
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Autotuner, "prune_configs", lambda self, kwargs: prune(self, kwargs)[:1])
        import fla  # noqa: F401

        AutoConfig.register("mamba", MambaConfig, exist_ok=True)
        yield


@torch.no_grad()
def perturb(model):
    """Spread every weight (norms and D start at exactly 1, so a swapped name would not show) and give the
    DeltaNet beta projections a wide range, so beta covers (0, 1) or (0, 2) rather than sitting at the middle."""
    for name, p in model.named_parameters():
        if name.endswith("b_proj.weight"):
            p.normal_(std=0.5)
        else:
            p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    return model


def tiny(mixer, **overrides):
    cfg = ModelConfig(mixer=mixer, vocab_size=VOCAB, hidden_size=32, num_layers=2,
                      **{"mlp": mixer != "mamba", **overrides})
    return perturb(LanguageModel(cfg).eval())


def token_ids():
    return torch.randint(0, VOCAB, (2, 24))  # T <= 64: fla takes its fused recurrent kernel, which accepts fp32


def native_model(directory, fmt):
    """The library's own class built from the exported config, with its fresh weights."""
    if fmt == "fla":
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM

        return DeltaNetForCausalLM(DeltaNetConfig.from_pretrained(directory))
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(MambaConfig.from_pretrained(directory))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tie", [False, True])
def test_every_parameter_maps_one_to_one(fla_on_cpu, tmp_path, fmt, tie):
    ours = tiny("deltanet" if fmt == "fla" else "mamba", tie_embeddings=tie)
    export_native(ours, tmp_path, fmt)
    native = set(native_model(tmp_path, fmt).state_dict())  # includes lm_head.weight, tied or not
    assert {map_name(name, fmt) for name in ours.state_dict()} == native
    assert {map_name(name, fmt, to_native=False) for name in native} == set(ours.state_dict())
    stored = native - ({"lm_head.weight"} if tie else set())  # a tied head is stored once, as the libraries do
    assert set(load_file(tmp_path / WEIGHTS_FILE)) == stored


@pytest.mark.parametrize("overrides", [
    {"allow_neg_eigval": True},
    {"use_output_gate": True, "tie_embeddings": False, "expand_v": 2.0, "conv_size": 3},
    {"allow_neg_eigval": True, "use_short_conv": False, "intermediate_size": 48, "num_heads": 2},
])
def test_fla_export_loads_in_fla_with_our_logits(fla_on_cpu, tmp_path, overrides):
    from fla.models import DeltaNetForCausalLM
    from transformers import AutoModelForCausalLM

    ours = tiny("deltanet", **overrides)
    export_native(ours, tmp_path, "fla", special_tokens={"eos_token_id": 2, "pad_token_id": 2})
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(theirs, DeltaNetForCausalLM) and theirs.dtype == torch.float32
    assert theirs.config.allow_neg_eigval is ours.config.allow_neg_eigval
    assert theirs.config.eos_token_id == 2 and theirs.config.bos_token_id is None
    assert theirs.model.embeddings.padding_idx is None  # else fla would never train the EOS embedding
    ids = token_ids()
    with torch.no_grad():
        assert rel_rms(theirs(ids).logits, ours(ids)) < TOL
        for block in theirs.model.layers:  # the comparison sees the switch: flipped in fla, far off
            block.attn.allow_neg_eigval = not block.attn.allow_neg_eigval
        assert rel_rms(theirs(ids).logits, ours(ids)) > 1e-2


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_embeddings": False, "mamba_conv_bias": False, "dt_rank": 3, "state_size": 4, "conv_size": 3, "expand": 3},
])
def test_hf_mamba_export_loads_in_transformers_with_our_logits(fla_on_cpu, tmp_path, overrides):
    from transformers import AutoModelForCausalLM, MambaForCausalLM

    ours = tiny("mamba", **overrides)
    export_native(ours, tmp_path, "hf-mamba")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # transformers' class, even with fla imported
    assert type(theirs) is MambaForCausalLM and theirs.dtype == torch.float32
    ids = token_ids()
    with torch.no_grad():
        assert rel_rms(theirs(ids).logits, ours(ids)) < TOL


def test_export_bytes_depend_only_on_the_model(tmp_path):
    ours = tiny("deltanet")
    export_native(ours, tmp_path / "a", "fla")
    export_native(ours, tmp_path / "b", "fla")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    keys = list(json.loads((tmp_path / "a" / CONFIG_FILE).read_text()))
    assert keys == sorted(keys)


@pytest.mark.parametrize("mixer,overrides,fmt,message", [
    ("mamba", {"allow_neg_eigval": True}, "hf-mamba",
     r"allow_neg_eigval=true: transformers' Mamba has no negative-eigenvalue switch.*use --format hf"),
    ("mamba", {"mlp": True}, "hf-mamba", r"model.mlp=true: transformers' MambaForCausalLM has no MLP.*--format hf"),
    ("deltanet", {}, "hf-mamba", r"Mamba models only.*'deltanet'; use --format fla or --format hf"),
    ("mamba", {}, "fla", r"DeltaNet models only.*'mamba'; use --format hf"),
    ("attention", {}, "fla", r"DeltaNet models only.*'attention'; use --format hf"),
    ("deltanet", {"mlp": False}, "fla", r"model.mlp=false: fla's DeltaNet block always has an MLP; use --format hf"),
    ("deltanet", {}, "hf", r"format 'hf' is not a native format; choose one of fla, hf-mamba"),
])
def test_refuses_what_the_format_cannot_hold(tmp_path, mixer, overrides, fmt, message):
    model = LanguageModel(ModelConfig(mixer=mixer, vocab_size=VOCAB, hidden_size=16, num_layers=1,
                                      **{"mlp": mixer != "mamba", **overrides}))
    with pytest.raises(ValueError, match=message):
        export_native(model, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(TypeError, match="needs a model.LanguageModel, got Linear"):
        export_native(torch.nn.Linear(2, 2), tmp_path, "fla")
    with pytest.raises(ValueError, match=r"special_tokens has unknown keys \['eos'\]"):
        export_native(tiny("deltanet"), tmp_path, "fla", special_tokens={"eos": 2})
