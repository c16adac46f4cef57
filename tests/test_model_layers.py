"""Building blocks against independent references: norms, SwiGLU, short conv, rotary attention, LSTM."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig
from model.attention import Attention
from model.conv import ShortConv
from model.lstm import LSTM
from model.mlp import SwiGLU
from model.norm import GatedRMSNorm, RMSNorm

# fp32 throughout: the references differ from our code only in summation order (~1e-7 relative),
# so 1e-5 is tight enough that any real mistake (O(1) error) fails.
TOL = 1e-5


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def test_rmsnorm_matches_torch_rms_norm():
    norm = RMSNorm(12, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 12)
    assert rel_rms(norm(x), F.rms_norm(x, (12,), norm.weight, eps=1e-6)) < TOL


def test_rmsnorm_keeps_input_dtype_and_computes_in_fp32():
    norm = RMSNorm(8)
    x = torch.randn(4, 8, dtype=torch.float16) * 300  # squares overflow fp16, not fp32
    y = norm(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert rel_rms(y.float(), F.rms_norm(x.float(), (8,), eps=1e-6)) < 1e-3  # fp16 output rounding


def test_gated_rmsnorm_is_rmsnorm_times_silu_gate():
    norm = GatedRMSNorm(6, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x, g = torch.randn(2, 7, 6), torch.randn(2, 7, 6)
    ref = F.rms_norm(x, (6,), norm.weight, eps=1e-5) * g * torch.sigmoid(g)
    assert rel_rms(norm(x, g), ref) < TOL


def test_swiglu():
    mlp = SwiGLU(8, 20)
    x = torch.randn(2, 3, 8)
    gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    ref = (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.T
    assert rel_rms(mlp(x), ref) < TOL
    assert all(m.bias is None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))


@pytest.mark.parametrize("kernel_size,bias,activation", [(4, False, True), (3, True, False), (1, True, True)])
def test_short_conv_is_causal_depthwise_conv_and_continues_from_state(kernel_size, bias, activation):
    conv = ShortConv(6, kernel_size, bias=bias, activation=activation)
    assert conv.weight.shape == (6, 1, kernel_size)
    x = torch.randn(2, 11, 6)
    # reference: nn.Conv1d's own padded convolution, cut back to the causal part
    ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=kernel_size - 1, groups=6)[..., :11]
    ref = (F.silu(ref) if activation else ref).transpose(1, 2)
    y, state = conv(x)
    assert rel_rms(y, ref) < TOL
    assert state.shape == (2, 6, kernel_size - 1)
    assert torch.equal(state, x[:, 11 - (kernel_size - 1):].transpose(1, 2))
    pieces, state = [], None
    for lo, hi in ((0, 1), (1, 5), (5, 6), (6, 11)):
        out, state = conv(x[:, lo:hi], state)
        pieces.append(out)
    assert rel_rms(torch.cat(pieces, 1), ref) < TOL


def test_short_conv_rejects_a_wrong_state():
    conv = ShortConv(4, 4)
    with pytest.raises(ValueError, match="expected \\(2, 4, 3\\)"):
        conv(torch.randn(2, 3, 4), torch.zeros(2, 4, 2))


def _reference_attention(layer, x, theta):
    """Rotary softmax attention written from scratch: complex rotation per (pair i, i + d/2), explicit mask."""
    B, T, D = x.shape
    H, d = layer.num_heads, layer.head_dim
    q, k, v = (x @ w.T for w in (layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight))
    q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in (q, k, v))
    freqs = theta ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    rot = torch.polar(torch.ones(T, d // 2, dtype=torch.float64),
                      torch.arange(T, dtype=torch.float64)[:, None] * freqs)  # [T, d/2]

    def apply(t):
        c = torch.complex(t[..., : d // 2].double(), t[..., d // 2:].double()) * rot
        return torch.cat([c.real, c.imag], -1)

    q, k = apply(q), apply(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = scores.softmax(-1) @ v.double()
    return (o.transpose(1, 2).reshape(B, T, D) @ layer.o_proj.weight.T.double()).float()


def test_attention_matches_reference_and_decodes_in_chunks():
    cfg = ModelConfig(mixer="attention", hidden_size=16, num_heads=2, rope_theta=500.0)
    layer = Attention(cfg)
    x = torch.randn(2, 10, 16)
    ref = _reference_attention(layer, x, 500.0)
    y, cache = layer(x)
    assert rel_rms(y, ref) < TOL
    assert cache.k.shape == (2, 2, 10, 8)
    pieces, state = [], None
    for lo, hi in ((0, 3), (3, 4), (4, 9), (9, 10)):
        out, state = layer(x[:, lo:hi], state)
        pieces.append(out)
    assert rel_rms(torch.cat(pieces, 1), ref) < TOL


def test_lstm_mixer_is_torch_lstm_plus_projection_and_continues():
    cfg = ModelConfig(mixer="lstm", hidden_size=8)
    layer = LSTM(cfg)
    x = torch.randn(2, 9, 8)
    h, _ = layer.lstm(x)
    ref = h @ layer.o_proj.weight.T
    y, state = layer(x)
    assert rel_rms(y, ref) < TOL
    y1, s1 = layer(x[:, :4])
    y2, _ = layer(x[:, 4:], s1)
    assert rel_rms(torch.cat([y1, y2], 1), ref) < TOL
    assert state.h.shape == state.c.shape == (1, 2, 8)
