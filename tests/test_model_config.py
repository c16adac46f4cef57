"""ModelConfig: defaults, derived sizes and validation messages."""
import dataclasses

import pytest

from model import ModelConfig


def test_defaults_validate_and_derived_sizes():
    cfg = ModelConfig().validate()
    assert (cfg.mixer, cfg.allow_neg_eigval, cfg.hidden_size, cfg.num_layers) == ("deltanet", False, 256, 4)
    assert cfg.mamba_dt_rank == 16  # ceil(256 / 16)
    assert ModelConfig(hidden_size=40).mamba_dt_rank == 3
    assert ModelConfig(dt_rank=5).mamba_dt_rank == 5
    assert cfg.d_inner == 512
    assert ModelConfig(intermediate_size=100).mlp_intermediate_size == 100


@pytest.mark.parametrize("hidden,ratio", [(256, 4), (32, 4), (1024, 4), (100, 3), (768, 2)])
def test_intermediate_size_follows_fla_gated_mlp(hidden, ratio):
    from fla.modules.mlp import GatedMLP

    expected = GatedMLP(hidden, hidden_ratio=ratio).intermediate_size
    assert ModelConfig(hidden_size=hidden, hidden_ratio=ratio).mlp_intermediate_size == expected


@pytest.mark.parametrize("overrides,message", [
    ({"mixer": "deltanett"}, "model.mixer='deltanett' is not allowed; choose one of deltanet, mamba, attention, "
                             "lstm; did you mean 'deltanet'?"),
    ({"kernel_backend": "cuda"}, "model.kernel_backend='cuda'"),
    ({"hidden_size": 100, "num_heads": 3}, "model.hidden_size=100 must be divisible by model.num_heads=3"),
    ({"expand_k": 0.25, "hidden_size": 10, "num_heads": 1},
     "model.hidden_size * model.expand_k = 2.5 must be an integer"),
    ({"expand_v": 1.5, "hidden_size": 20, "num_heads": 4}, "model.hidden_size * model.expand_v=30 must be "
                                                            "divisible by model.num_heads=4"),
    ({"mixer": "attention", "hidden_size": 30, "num_heads": 4}, "model.hidden_size=30 must be divisible"),
    ({"mixer": "attention", "hidden_size": 24, "num_heads": 8}, "must be even for rotary"),
    ({"vocab_size": 0}, "model.vocab_size=0 must be a positive integer"),
    ({"num_layers": 2.5}, "model.num_layers=2.5 must be a positive integer"),
    ({"num_heads": True}, "model.num_heads=True must be a positive integer"),
    ({"intermediate_size": -1}, "model.intermediate_size=-1"),
    ({"dt_rank": 0}, "model.dt_rank=0"),
    ({"norm_eps": 0.0}, "model.norm_eps=0.0 must be a positive number"),
    ({"rope_theta": "big"}, "model.rope_theta='big' must be a positive number"),
    ({"dt_min": 0.5, "dt_max": 0.1}, "model.dt_min=0.5 must not exceed model.dt_max=0.1"),
    ({"allow_neg_eigval": "yes"}, "model.allow_neg_eigval='yes' must be true or false"),
])
def test_validation_names_the_key(overrides, message):
    with pytest.raises(ValueError) as info:
        ModelConfig(**overrides).validate()
    assert message in str(info.value)


def test_head_divisibility_only_binds_mixers_with_heads():
    # Mamba and LSTM have no heads, so an odd width is fine for them
    for mixer in ("mamba", "lstm"):
        ModelConfig(mixer=mixer, hidden_size=30, num_heads=4).validate()


def test_every_field_has_a_default():
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(ModelConfig))
