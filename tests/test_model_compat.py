"""Weights map one to one to fla's DeltaNet and transformers' MambaMixer, and the mixers compute what the
references compute: fla's naive delta-rule recurrence, transformers' Mamba forward, and a per-step loop with
the extended decay 2 exp(delta A) - 1."""
import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig
from model.deltanet import DeltaNet
from model.mamba import Mamba

# fp32; each reference runs the same maths in a different order (a sequential loop vs our chunked/scan
# kernels), so errors are roundoff, ~1e-7 relative. 1e-5 fails on any real mismatch.
TOL = 1e-5


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


@pytest.mark.parametrize("overrides", [
    {},
    {"use_output_gate": True},
    {"use_short_conv": False},
    {"expand_k": 0.5, "expand_v": 2.0, "conv_size": 3},
])
def test_deltanet_parameters_match_fla(overrides):
    from fla.layers import DeltaNet as FlaDeltaNet

    cfg = ModelConfig(hidden_size=32, num_heads=4, **overrides).validate()
    fla = FlaDeltaNet(hidden_size=32, num_heads=4, expand_k=cfg.expand_k, expand_v=cfg.expand_v,
                      use_gate=cfg.use_output_gate, use_short_conv=cfg.use_short_conv, conv_size=cfg.conv_size,
                      allow_neg_eigval=True)
    assert shapes(DeltaNet(cfg)) == shapes(fla)


def _l2norm(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)  # fla's in-kernel l2norm


def _deltanet_reference(layer, x, neg, gate):
    """The layer's maths written out, with fla's naive sequential delta rule as the recurrence."""
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    B, T, _ = x.shape
    H = layer.num_heads

    def conv(w, t):  # causal depthwise conv + SiLU, [B, T, C]
        return F.silu(F.conv1d(F.pad(t.transpose(1, 2), (w.shape[-1] - 1, 0)), w, groups=w.shape[0])).transpose(1, 2)

    q = conv(layer.q_conv1d.weight, x @ layer.q_proj.weight.T)
    k = conv(layer.k_conv1d.weight, x @ layer.k_proj.weight.T)
    v = conv(layer.v_conv1d.weight, x @ layer.v_proj.weight.T)
    q, k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, T, d]
    beta = torch.sigmoid(x @ layer.b_proj.weight.T).transpose(1, 2)  # [B, H, T]
    if neg:
        beta = 2 * beta
    o, _ = delta_rule_recurrence(_l2norm(q), _l2norm(k), v, beta)
    o = o.transpose(1, 2)  # [B, T, H, V]
    o = F.rms_norm(o, (o.shape[-1],), layer.o_norm.weight, eps=layer.o_norm.eps)
    if gate:
        g = (x @ layer.g_proj.weight.T).view(B, T, H, -1)
        o = o * F.silu(g)
    return o.reshape(B, T, -1) @ layer.o_proj.weight.T


@pytest.mark.parametrize("neg,gate", [(False, False), (True, False), (True, True)])
def test_deltanet_matches_fla_naive_recurrence_and_doubles_beta(neg, gate):
    cfg = ModelConfig(hidden_size=32, num_heads=2, allow_neg_eigval=neg, use_output_gate=gate)
    layer = DeltaNet(cfg)
    for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.b_proj):
        torch.nn.init.normal_(lin.weight, std=0.3)  # beta spread over (0, 1) or (0, 2), not stuck at the middle
    x = torch.randn(2, 70, 32)  # more than one 64-token chunk of the kernel
    with torch.no_grad():
        y, _ = layer(x)
        ref = _deltanet_reference(layer, x, neg, gate)
        assert rel_rms(y, ref) < TOL
        head, state = layer(x[:, :45])
        tail, _ = layer(x[:, 45:], state)
        assert rel_rms(torch.cat([head, tail], 1), ref) < TOL
        # the reference distinguishes the two settings: the other beta scale is far off
        assert rel_rms(y, _deltanet_reference(layer, x, not neg, gate)) > 1e-2


def _transformers_mixer(cfg, bias=True):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    hf = MambaConfig(hidden_size=cfg.hidden_size, state_size=cfg.state_size, expand=cfg.expand,
                     conv_kernel=cfg.conv_size, time_step_rank=cfg.mamba_dt_rank, use_conv_bias=bias,
                     num_hidden_layers=1, vocab_size=8)
    return MambaMixer(hf, layer_idx=0).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_mamba_parameters_match_transformers(bias):
    cfg = ModelConfig(mixer="mamba", hidden_size=40, state_size=6, mamba_conv_bias=bias).validate()
    assert shapes(Mamba(cfg)) == shapes(_transformers_mixer(cfg, bias))


def test_mamba_matches_transformers_forward():
    cfg = ModelConfig(mixer="mamba", hidden_size=24, state_size=5, dt_max=0.5)
    ours = Mamba(cfg)
    theirs = _transformers_mixer(cfg)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 13, 24)
    with torch.no_grad():
        y, _ = ours(x)
        assert rel_rms(y, theirs(x)) < TOL


def _mamba_reference(layer, x, neg):
    """Mamba-1 step by step: h = a h + delta B x, y = (C h + D x) SiLU(z), a = exp(delta A) (or 2 exp - 1)."""
    T = x.shape[1]
    xs, z = (x @ layer.in_proj.weight.T).chunk(2, -1)
    w = layer.conv1d.weight
    xs = F.conv1d(F.pad(xs.transpose(1, 2), (w.shape[-1] - 1, 0)), w, layer.conv1d.bias, groups=w.shape[0])
    xs = F.silu(xs).transpose(1, 2)  # [B, T, d_inner]
    dt, Bm, Cm = (xs @ layer.x_proj.weight.T).split([layer.dt_rank, layer.state_size, layer.state_size], -1)
    delta = F.softplus(dt @ layer.dt_proj.weight.T + layer.dt_proj.bias)  # [B, T, d_inner]
    A = -torch.exp(layer.A_log)
    h = x.new_zeros(x.shape[0], layer.d_inner, layer.state_size)
    ys = []
    for t in range(T):
        a = torch.exp(delta[:, t, :, None] * A)
        if neg:
            a = 2 * a - 1
        h = a * h + delta[:, t, :, None] * Bm[:, t, None, :] * xs[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + layer.D * xs[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ layer.out_proj.weight.T


@pytest.mark.parametrize("neg", [False, True])
def test_mamba_matches_step_by_step_reference_with_decay_mapping(neg):
    cfg = ModelConfig(mixer="mamba", hidden_size=16, state_size=8, allow_neg_eigval=neg, dt_min=0.05, dt_max=1.0)
    layer = Mamba(cfg)
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        y, state = layer(x)
        assert rel_rms(y, _mamba_reference(layer, x, neg)) < TOL
        assert rel_rms(y, _mamba_reference(layer, x, not neg)) > 1e-2
    assert state.ssm.shape == (2, 32, 8) and state.ssm.dtype == torch.float32
    assert state.conv.shape == (2, 32, 3)
