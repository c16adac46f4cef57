"""Hugging Face port of the lrnn-neg language model: DeltaNet, Mamba, attention or LSTM blocks, with the
`allow_neg_eigval` switch (DeltaNet beta = 2 sigmoid(.), Mamba decay 2 exp(delta A) - 1), for transformers >= 5.

This file duplicates the repository's model on purpose: `trust_remote_code` copies only it and
configuration_lrnn.py next to the weights, so it cannot import the repository. It re-implements the forward in
plain torch (the delta rule chunk by chunk, the selective scan token by token) with the same parameter names,
and tests/test_export_hf.py checks its logits and generations against the repository's model. On CUDA, when the
repository's `kernels` package is importable, its Triton kernels run the delta rule and the scan instead.

Decoding uses transformers' cache API: attention layers keep keys and values in a DynamicCache layer; every other
layer is a `linear_attention` layer holding one conv state (the convolution's last inputs, all of a layer's
convolutions concatenated on the channel axis; empty for mixers without one, because the cache reports a
recurrent state only once a conv state was written) and one recurrent state. Left padding leaves every state as
it was: padded positions feed zeros to the projections' convolutions and write nothing (DeltaNet k = 0, Mamba
delta = 0, LSTM state kept); attention hides padded keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_lrnn import LRNNConfig

try:  # the repository's Triton kernels, used on CUDA when installed alongside (never required)
    from kernels.delta_rule import chunk_delta_rule as repo_delta_rule
    from kernels.selective_scan import selective_scan_fn as repo_selective_scan
except ImportError:
    repo_delta_rule = repo_selective_scan = None

if not hasattr(Cache, "get_recurrent_state"):
    raise ImportError(f"modeling_lrnn.py needs transformers' linear-attention cache API (tested with transformers "
                      f"5.24); this is transformers {transformers.__version__}: pip install 'transformers>=5.24'")

DELTA_CHUNK = 64


def use_repo_kernels(x: torch.Tensor) -> bool:
    """Run the repository's kernels: only on CUDA tensors, and only when they are importable."""
    return repo_delta_rule is not None and x.is_cuda


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def delta_rule(q, k, v, beta, state):
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t with q, k L2-normalised, q scaled.

    q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; state [B, H, K, V] fp32 or None.
    Returns o [B, T, H, V] (fp32 on the torch path) and the fp32 final state. Within a chunk of C tokens, with S
    the state entering it: W = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta) K, U likewise with V,
    U' = U - W S, o = Q S + tril(Q K^T) U' and the next state S + K^T U'.
    """
    if use_repo_kernels(q):
        return repo_delta_rule(q, k, v, beta, initial_state=state, output_final_state=True,
                               use_qk_l2norm_in_kernel=True)
    B, T, H, K = q.shape
    q = l2norm(q.float()) * K ** -0.5
    q, k, v, beta = (x.transpose(1, 2) for x in (q, l2norm(k.float()), v.float(), beta.float()))  # [B, H, T, *]
    if state is None:
        state = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for start in range(0, T, DELTA_CHUNK):
        qc, kc, vc, bc = (x[:, :, start:start + DELTA_CHUNK] for x in (q, k, v, beta))
        kb = kc * bc[..., None]
        eye = torch.eye(kc.shape[2], dtype=kc.dtype, device=kc.device)
        inv = torch.linalg.solve_triangular((kb @ kc.mT).tril(-1), eye, upper=False, unitriangular=True)
        w, u = inv @ kb, inv @ (vc * bc[..., None])  # [B, H, C, K], [B, H, C, V]
        u = u - w @ state
        outs.append(qc @ state + (qc @ kc.mT).tril() @ u)
        state = state + kc.mT @ u
    return torch.cat(outs, 2).transpose(1, 2), state


def selective_scan(x, delta, A, Bm, Cm, state, allow_neg_eigval):
    """h_t = a_t h_{t-1} + delta_t x_t B_t, y_t = C_t h_t, a_t = exp(delta_t A) (or 2 exp(delta_t A) - 1).

    x, delta [B, T, D] (delta after softplus); A [D, N]; Bm, Cm [B, T, N]; state [B, D, N] fp32 or None.
    Returns y [B, T, D] fp32 (without the D skip and the gate) and the final state.
    """
    if use_repo_kernels(x):
        y, state = repo_selective_scan(x.float().transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2),
                                       Cm.transpose(1, 2), return_last_state=True, initial_state=state,
                                       allow_neg_eigval=allow_neg_eigval)
        return y.transpose(1, 2), state
    x, delta, Bm, Cm = x.float(), delta.float(), Bm.float(), Cm.float()
    if state is None:
        state = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(delta[:, t, :, None] * A)  # [B, D, N]
        if allow_neg_eigval:
            decay = 2 * decay - 1
        state = torch.addcmul((delta[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :], decay, state)
        ys.append((state * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1), state


def read_state(cache, layer_idx: int):
    """(conv state, recurrent state) of a linear_attention cache layer; None for either when there is none yet."""
    if cache is None:
        return None, None
    return cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)


def write_state(cache, layer_idx: int, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
    """Store a layer's new states; the conv state first, since the cache reports recurrent states only after it."""
    if cache is not None:
        cache.update_conv_state(conv, layer_idx, conv_kernel_size=conv.shape[-1])
        cache.update_recurrent_state(recurrent, layer_idx)


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, ...] with the positions where mask [B, T] is False set to zero."""
    return x if mask is None else x * mask.reshape(*mask.shape, *[1] * (x.dim() - 2)).to(x.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and returned in x's dtype."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(x).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * SiLU(g)."""

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (self.normalise(x) * F.silu(g.float())).to(x.dtype)


class ShortConv(nn.Conv1d):
    """Depthwise causal conv over time on [B, T, D] input, then SiLU; its state is the last K-1 inputs [B, D, K-1]."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.kernel_size[0] - 1
        x = x.transpose(1, 2)  # [B, D, T]
        if state is None:
            state = x.new_zeros(x.shape[0], x.shape[1], width)
        full = torch.cat([state.to(x.dtype), x], dim=-1)  # [B, D, K-1+T]
        y = F.silu(F.conv1d(full, self.weight, self.bias, groups=self.groups))
        return y.transpose(1, 2), full[..., full.shape[-1] - width:]


class SwiGLU(nn.Module):
    """down_proj(SiLU(gate_proj(x)) * up_proj(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DeltaNet(nn.Module):
    """DeltaNet mixer (fla's parameter names): short convs on q, k, v, L2-normalised q, k, beta = sigmoid(b_proj x),
    doubled when allow_neg_eigval."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        key_dim, value_dim = round(config.hidden_size * config.expand_k), round(config.hidden_size * config.expand_v)
        self.num_heads = config.num_heads
        self.head_k_dim, self.head_v_dim = key_dim // config.num_heads, value_dim // config.num_heads
        self.q_proj = nn.Linear(config.hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, value_dim, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, config.num_heads, bias=False)
        if config.use_short_conv:
            self.q_conv1d = ShortConv(key_dim, config.conv_size)
            self.k_conv1d = ShortConv(key_dim, config.conv_size)
            self.v_conv1d = ShortConv(value_dim, config.conv_size)
        if config.use_output_gate:
            self.g_proj = nn.Linear(config.hidden_size, value_dim, bias=False)
        self.o_norm = (GatedRMSNorm if config.use_output_gate else RMSNorm)(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(value_dim, config.hidden_size, bias=False)

    def forward(self, x, cache=None, mask=None):
        B, T, _ = x.shape
        conv, recurrent = read_state(cache, self.layer_idx)
        q, k, v = (zero_padding(p(x), mask) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.config.use_short_conv:
            sizes = [q.shape[-1], k.shape[-1], v.shape[-1]]
            cq, ck, cv = conv.split(sizes, dim=1) if conv is not None else (None, None, None)
            (q, cq), (k, ck), (v, cv) = self.q_conv1d(q, cq), self.k_conv1d(k, ck), self.v_conv1d(v, cv)
            conv = torch.cat([cq, ck, cv], dim=1)  # [B, 2 key_dim + value_dim, K-1]
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
            conv = x.new_zeros(B, 0, 0)
        beta = self.b_proj(x).float().sigmoid()  # [B, T, H]; padded positions have k = 0: the step is the identity
        if self.config.allow_neg_eigval:
            beta = beta * 2
        o, recurrent = delta_rule(q.view(B, T, self.num_heads, -1), k.view(B, T, self.num_heads, -1),
                                  v.view(B, T, self.num_heads, -1), beta, recurrent)  # o [B, T, H, V]
        write_state(cache, self.layer_idx, conv, recurrent)
        o = o.to(x.dtype)
        if self.config.use_output_gate:
            o = self.o_norm(o, self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, -1))


class Mamba(nn.Module):
    """Mamba-1 selective SSM (transformers' MambaMixer names); decay exp(delta A), or 2 exp(delta A) - 1 in (-1, 1)
    when allow_neg_eigval; A = -exp(A_log), delta = softplus(dt_proj(x))."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d_inner, n, rank = config.expand * config.hidden_size, config.state_size, config.dt_rank
        self.d_inner, self.state_size, self.dt_rank = d_inner, n, rank
        self.in_proj = nn.Linear(config.hidden_size, 2 * d_inner, bias=False)
        self.conv1d = ShortConv(d_inner, config.conv_size, bias=config.mamba_conv_bias)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, n))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, config.hidden_size, bias=False)

    def forward(self, x, cache=None, mask=None):
        conv, recurrent = read_state(cache, self.layer_idx)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, d_inner] each
        xs, conv = self.conv1d(zero_padding(xs, mask), conv)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())  # [B, T, d_inner]
        delta = zero_padding(delta, mask)  # 0 makes the decay 1 and the write 0
        A = -torch.exp(self.A_log.float())  # [d_inner, n]
        y, recurrent = selective_scan(xs, delta, A, Bm, Cm, recurrent, self.config.allow_neg_eigval)
        write_state(cache, self.layer_idx, conv, recurrent)
        y = (y + xs.float() * self.D.float()) * F.silu(z.float())
        return self.out_proj(y.to(x.dtype))


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half) of x [B, H, T, d] at positions [T]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** -(torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [d/2]
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Causal softmax attention with rotary positions."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_heads, config.hidden_size // config.num_heads
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, cache=None, mask=None, full_mask=None):
        B, T, _ = x.shape
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        q, k, v = (p(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, H, T, d] each
        # rotary scores depend only on relative positions, so left padding needs no position shift
        positions = torch.arange(past, past + T, device=x.device)
        q, k = rotate(q, positions, self.rope_theta), rotate(k, positions, self.rope_theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, H, past+T, d]
        if full_mask is None and past == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys = torch.arange(past + T, device=x.device)
            allowed = keys[None, :] <= keys[past:, None]  # [T, past+T]
            if full_mask is not None:
                if full_mask.shape[1] != past + T:
                    raise ValueError(f"attention_mask covers {full_mask.shape[1]} tokens; attention needs all "
                                     f"{past + T} (the cached ones and these)")
                # padded keys are hidden; a padded query still sees itself, so no softmax row is empty
                allowed = (allowed & full_mask[:, None]) | (keys[None, :] == keys[past:, None])
                allowed = allowed[:, None]  # [B, 1, T, past+T]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class LSTM(nn.Module):
    """torch.nn.LSTM over the sequence, then o_proj; the cached recurrent state is (h, c) as [B, 2, D]."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.lstm = nn.LSTM(config.hidden_size, config.hidden_size, batch_first=True)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, cache=None, mask=None):
        _, hc = read_state(cache, self.layer_idx)
        if hc is None:
            hc = x.new_zeros(x.shape[0], 2, x.shape[2])
        h, c = (s[None].contiguous() for s in hc.unbind(1))  # [1, B, D] each
        if mask is None:
            y, (h, c) = self.lstm(x, (h, c))
        else:  # one step at a time, keeping the state through padded positions
            ys = []
            for t in range(x.shape[1]):
                y_t, (h_new, c_new) = self.lstm(x[:, t:t + 1], (h, c))
                keep = mask[None, :, t, None]  # [1, B, 1]
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                ys.append(y_t)
            y = torch.cat(ys, 1)
        write_state(cache, self.layer_idx, x.new_zeros(x.shape[0], 0, 0), torch.stack([h[0], c[0]], 1))
        return self.o_proj(y)


MIXER_CLASSES = {"deltanet": DeltaNet, "mamba": Mamba, "attention": Attention, "lstm": LSTM}


class LRNNBlock(nn.Module):
    """x + mixer(mixer_norm(x)), then, with an MLP, x + mlp(mlp_norm(x))."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = MIXER_CLASSES[config.mixer](config, layer_idx)
        if config.mlp:
            self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cache=None, mask=None, full_mask=None):
        kwargs = {"full_mask": full_mask} if isinstance(self.mixer, Attention) else {}
        x = x + self.mixer(self.mixer_norm(x), cache=cache, mask=mask, **kwargs)
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x


class LRNNPreTrainedModel(PreTrainedModel):
    config_class = LRNNConfig
    base_model_prefix = "model"
    _no_split_modules = ["LRNNBlock"]
    _is_stateful = True  # recurrent states cannot be cropped: no assisted decoding

    def _init_weights(self, module):
        """transformers' defaults, plus Mamba-1's S4D-real A = -(1..n) and D = 1 (used only for weights not loaded)."""
        super()._init_weights(module)
        if isinstance(module, Mamba):
            n = torch.arange(1, module.state_size + 1, dtype=torch.float32)
            init.copy_(module.A_log, torch.log(n).expand(module.d_inner, -1))
            init.ones_(module.D)


class LRNNModel(LRNNPreTrainedModel):
    """Embeddings, blocks and the final norm; returns the last hidden state and the cache."""

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LRNNBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None,
                **kwargs) -> BaseModelOutputWithPast:
        """attention_mask [B, past + T] (1 = token, 0 = padding) may cover cached tokens too; only left padding
        keeps recurrent states exact."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        full_mask = mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must be [batch, length] (1 = token, 0 = padding), got shape "
                                 f"{tuple(attention_mask.shape)}")
            if not bool(attention_mask.all()):
                full_mask = attention_mask.bool()
                mask = full_mask[:, -x.shape[1]:]  # [B, T]
        for block in self.layers:
            x = block(x, cache=cache, mask=mask, full_mask=full_mask)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache)


class LRNNForCausalLM(LRNNPreTrainedModel, GenerationMixin):
    """The language model; logits are fp32 whatever the weights' dtype."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.model = LRNNModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None,
                labels=None, logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                         cache=cache, use_cache=use_cache)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()  # [B, T, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
