"""LanguageModel: shapes and gradients for every mixer, decoding with the recurrent state, generation, init,
eigenvalue statistics and input checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import LanguageModel, ModelConfig, build_model
from model.attention import KVCache
from model.deltanet import DeltaNetState
from model.lstm import LSTMState
from model.mamba import MambaState

MIXERS = ("deltanet", "mamba", "attention", "lstm")
STATE_TYPES = {"deltanet": DeltaNetState, "mamba": MambaState, "attention": KVCache, "lstm": LSTMState}
# Decoding and full forward compute the same fp32 numbers in different orders (chunked vs one step at a time):
# roundoff is ~1e-7 relative, so 1e-5 catches any misplaced or dropped state (an O(1) error).
TOL = 1e-5


def tiny(mixer="deltanet", neg=False, **overrides):
    fields = dict(mixer=mixer, allow_neg_eigval=neg, vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                  intermediate_size=48, state_size=8, dt_max=1.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_shapes_and_every_parameter_gets_a_gradient(mixer, neg):
    model = build_model(tiny(mixer, neg))
    ids = torch.randint(0, 64, (2, 9))
    logits, state = model(ids, return_state=True)
    assert logits.shape == (2, 9, 64) and logits.dtype == torch.float32
    assert len(state) == 2 and all(isinstance(s, STATE_TYPES[mixer]) for s in state)
    assert torch.equal(model(ids), logits)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


DECODE_CASES = [(m, neg, {}) for m in MIXERS for neg in (False, True)] + [
    ("deltanet", True, {"use_output_gate": True}),
    ("deltanet", False, {"use_short_conv": False}),
    ("deltanet", True, {"expand_v": 2.0, "conv_size": 2}),
    ("mamba", True, {"mlp": False, "mamba_conv_bias": False}),
]


@pytest.mark.parametrize("mixer,neg,overrides", DECODE_CASES)
def test_decoding_with_state_equals_full_forward(mixer, neg, overrides):
    model = build_model(tiny(mixer, neg, **overrides)).eval()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        full = model(ids)
        # prefill 5 tokens, then one token at a time
        logits, state = model(ids[:, :5], return_state=True)
        steps = [logits]
        for t in range(5, 16):
            logits, state = model(ids[:, t:t + 1], state=state, return_state=True)
            steps.append(logits)
        assert rel_rms(torch.cat(steps, 1), full) < TOL
        # uneven chunks, starting with a single token and no state
        state, pieces, start = None, [], 0
        for size in (1, 4, 1, 6, 4):
            logits, state = model(ids[:, start:start + size], state=state, return_state=True)
            pieces.append(logits)
            start += size
        assert rel_rms(torch.cat(pieces, 1), full) < TOL


def test_state_is_needed_to_continue():
    # without the state the continuation differs: the equality above is not vacuous
    model = build_model(tiny("deltanet", True)).eval()
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert rel_rms(model(ids[:, 6:]), model(ids)[:, 6:]) > 1e-2


@pytest.mark.parametrize("mixer,neg", [("deltanet", True), ("mamba", True), ("attention", False), ("lstm", False)])
def test_greedy_generate_equals_argmax_of_full_forward(mixer, neg):
    model = build_model(tiny(mixer, neg)).eval()
    prompt = torch.randint(0, 64, (2, 5))
    out = model.generate(prompt, max_new_tokens=6)
    expected = prompt
    with torch.no_grad():
        for _ in range(6):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, expected)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = build_model(tiny("deltanet", True)).eval()
    prompt = torch.randint(0, 64, (3, 4))

    def sample(seed, **kw):
        return model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert torch.equal(sample(3, top_k=1), model.generate(prompt, 8))
    assert model.generate(prompt, 0) is prompt


def test_generation_stops_at_eos_and_pads_finished_rows_with_it():
    model = build_model(tiny("mamba")).eval()
    prompt = torch.randint(0, 64, (2, 4))
    greedy = model.generate(prompt, 6)
    eos = int(greedy[0, 4])  # row 0's first new token
    out = model.generate(prompt, 6, eos_id=eos)
    assert (out[0, 4:] == eos).all()
    row1 = greedy[1, 4:].tolist()
    if eos in row1:  # row 1 finishes too: generation stops right after it
        cut = row1.index(eos) + 1
        assert out.shape[1] == 4 + cut and out[1, 4:].tolist() == row1[:cut]
    else:
        assert torch.equal(out[1], greedy[1])
    single = model.generate(prompt[:1], 6, eos_id=eos)
    assert single.shape == (1, 5)


def _std(t):
    return t.float().std().item()


def test_init_normal_weights_and_gpt2_residual_scaling():
    cfg = tiny("deltanet", hidden_size=64, num_layers=3, intermediate_size=128)
    model = build_model(cfg)
    block = model.layers[0]
    # std estimates over >= 4096 values are within ~2% (1 sigma); 10% is a 5-sigma margin
    for weight, expected in ((model.embeddings.weight, 0.02), (block.mixer.q_proj.weight, 0.02),
                             (block.mlp.gate_proj.weight, 0.02),
                             (block.mixer.o_proj.weight, 0.02 / math.sqrt(6)),
                             (block.mlp.down_proj.weight, 0.02 / math.sqrt(6))):
        assert abs(_std(weight) / expected - 1) < 0.1
    assert torch.equal(block.mixer_norm.weight, torch.ones(64))
    assert torch.equal(block.mixer.o_norm.weight, torch.ones(32))
    assert model.lm_head.weight is model.embeddings.weight
    untied = build_model(tiny("deltanet", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embeddings.weight
    assert untied.num_params() - build_model(tiny("deltanet")).num_params() == 64 * 32  # the untied head


def test_mamba_init():
    cfg = tiny("mamba", hidden_size=64, num_layers=2, mlp=False, state_size=16, dt_min=0.002, dt_max=0.2,
               dt_init_floor=0.003)
    mixer = build_model(cfg).layers[1].mixer
    assert torch.allclose(mixer.A_log, torch.log(torch.arange(1.0, 17.0)).expand(128, 16))
    assert torch.equal(mixer.D.detach(), torch.ones(128))
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= 0.003 - 1e-7 and dt.max() <= 0.2 + 1e-6
    assert (dt < 0.02).any() and (dt > 0.02).any()  # log-uniform over the range, not a constant
    bound = mixer.dt_rank ** -0.5  # dt_rank = ceil(64 / 16) = 4
    w = mixer.dt_proj.weight
    assert w.abs().max() <= bound and abs(_std(w) / (bound / math.sqrt(3)) - 1) < 0.1  # uniform, not N(0, .02)
    # no MLP: one residual branch per layer, so out_proj is scaled by 1/sqrt(num_layers)
    assert abs(_std(mixer.out_proj.weight) / (0.02 / math.sqrt(2)) - 1) < 0.1
    assert all(getattr(p, "_no_weight_decay", False) for p in (mixer.A_log, mixer.D, mixer.dt_proj.bias))
    assert not getattr(mixer.out_proj.weight, "_no_weight_decay", False)


def _capture(module, kind):
    """Record a module's input ("in") or output ("out") on its next call."""
    seen = {}
    if kind == "in":
        module.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach()))
    else:
        module.register_forward_hook(lambda m, args, out: seen.update(x=out.detach()))
    return seen


@pytest.mark.parametrize("neg", [False, True])
def test_deltanet_eigenvalue_stats_are_one_minus_beta(neg):
    model = build_model(tiny("deltanet", neg))
    seen = [_capture(block.mixer, "in") for block in model.layers]
    ids = torch.randint(0, 64, (2, 12))
    model(ids)
    assert model.eigenvalue_stats() == {}  # off by default
    model.track_eigenvalues(True)
    model(ids)
    stats = model.eigenvalue_stats()
    assert set(stats) == {"layer0.neg_eig_frac", "layer0.min_eig", "layer1.neg_eig_frac", "layer1.min_eig"}
    for i, block in enumerate(model.layers):
        beta = torch.sigmoid(seen[i]["x"] @ block.mixer.b_proj.weight.T) * (2 if neg else 1)  # [B, T, H]
        eig = 1 - beta
        assert stats[f"layer{i}.neg_eig_frac"] == pytest.approx((eig < 0).float().mean().item(), abs=1e-7)
        assert stats[f"layer{i}.min_eig"] == pytest.approx(eig.min().item(), abs=1e-6)
        if neg:
            assert 0 < stats[f"layer{i}.neg_eig_frac"] < 1 and stats[f"layer{i}.min_eig"] < 0
        else:
            assert stats[f"layer{i}.neg_eig_frac"] == 0 and stats[f"layer{i}.min_eig"] >= 0
    model.track_eigenvalues(False)
    assert model.eigenvalue_stats() == {}


@pytest.mark.parametrize("neg", [False, True])
def test_mamba_eigenvalue_stats_match_the_full_decay_tensor(neg):
    model = build_model(tiny("mamba", neg, state_size=16))
    model.track_eigenvalues(True)
    seen = [_capture(block.mixer.x_proj, "out") for block in model.layers]
    model(torch.randint(0, 64, (2, 12)))
    stats = model.eigenvalue_stats()
    for i, block in enumerate(model.layers):
        mixer = block.mixer
        dt_low = seen[i]["x"][..., :mixer.dt_rank]
        delta = F.softplus(dt_low @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)  # [B, T, d_inner]
        decay = torch.exp(-delta[..., None] * torch.exp(mixer.A_log))  # [B, T, d_inner, n]
        if neg:
            decay = 2 * decay - 1
        decay = decay.detach()
        assert stats[f"layer{i}.neg_eig_frac"] == pytest.approx((decay < 0).float().mean().item(), abs=1e-6)
        assert stats[f"layer{i}.min_eig"] == pytest.approx(decay.min().item(), abs=1e-6)
        if neg:
            assert 0 < stats[f"layer{i}.neg_eig_frac"] < 1 and stats[f"layer{i}.min_eig"] < 0
        else:
            assert stats[f"layer{i}.neg_eig_frac"] == 0 and stats[f"layer{i}.min_eig"] >= 0


@pytest.mark.parametrize("mixer", ["attention", "lstm"])
def test_no_eigenvalue_stats_for_attention_and_lstm(mixer):
    model = build_model(tiny(mixer))
    model.track_eigenvalues(True)
    model(torch.randint(0, 64, (1, 5)))
    assert model.eigenvalue_stats() == {}


def test_bad_inputs_raise_clear_errors():
    model = LanguageModel(tiny("attention"))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="input_ids must be \\[B, T\\]"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="state has 1 entries but the model has 2 layers"):
        model(torch.zeros(1, 3, dtype=torch.long), state=[None])
    with pytest.raises(ValueError, match="model.mixer='mamb'"):
        LanguageModel(ModelConfig(mixer="mamb"))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1.0)


@pytest.mark.parametrize("mixer,module,entry", [("deltanet", "model.deltanet", "chunk_delta_rule"),
                                                 ("mamba", "model.mamba", "selective_scan_fn")])
def test_kernel_backend_and_sign_switch_reach_the_kernel(mixer, module, entry, monkeypatch):
    import importlib

    mod = importlib.import_module(module)
    real, seen = getattr(mod, entry), []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, entry, spy)
    build_model(tiny(mixer, True, kernel_backend="naive"))(torch.randint(0, 64, (1, 6)))
    assert len(seen) == 2 and all(kw["backend"] == "naive" for kw in seen)
    if mixer == "mamba":
        assert all(kw["allow_neg_eigval"] is True and kw["delta_softplus"] is True for kw in seen)
