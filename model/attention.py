"""Causal multi-head softmax attention with rotary positions and a KV cache for decoding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


@dataclass
class KVCache:
    """Keys and values of every token seen so far, [B, H, S, head_dim] each (keys already rotated)."""

    k: torch.Tensor
    v: torch.Tensor


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half convention) of x [B, H, T, d] at integer positions [T]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** -(torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [d/2]
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Softmax attention; positions continue from the cache length, so chunked decoding matches one pass."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.rope_theta = cfg.rope_theta
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """x [B, T, D] -> (y [B, T, D], cache including these T tokens)."""
        B, T, _ = x.shape
        past = state.k.shape[2] if state is not None else 0
        q, k, v = (p(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, H, T, d] each
        positions = torch.arange(past, past + T, device=x.device)
        q, k = rotate(q, positions, self.rope_theta), rotate(k, positions, self.rope_theta)
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], dim=2)  # [B, H, past+T, d]
            v = torch.cat([state.v.to(v.dtype), v], dim=2)
        if past == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # query i sits at position past+i and may see keys 0..past+i (sdpa's is_causal aligns top-left)
            keys = torch.arange(past + T, device=x.device)
            mask = keys[None, :] <= positions[:, None]  # [T, past+T]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), KVCache(k, v)
