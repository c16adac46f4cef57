"""DeltaNet mixer with fla's DeltaNet parameter names and shapes, on our delta-rule kernel."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.delta_rule import chunk_delta_rule

from .config import ModelConfig
from .conv import ShortConv
from .norm import GatedRMSNorm, RMSNorm


@dataclass
class DeltaNetState:
    """Decoding state: the fast-weight matrix [B, H, K, V] (fp32) and the q/k/v conv states, or None."""

    recurrent: torch.Tensor
    conv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


class DeltaNet(nn.Module):
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t, per head.

    q, k are L2-normalised per head so the transition's one non-trivial eigenvalue is 1 - beta;
    beta = sigmoid(b_proj(x)), doubled when `allow_neg_eigval` so that eigenvalue reaches into (-1, 1).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.head_k_dim = cfg.key_dim // cfg.num_heads
        self.head_v_dim = cfg.value_dim // cfg.num_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.key_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.key_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.value_dim, bias=False)
        self.b_proj = nn.Linear(cfg.hidden_size, cfg.num_heads, bias=False)
        if cfg.use_short_conv:
            self.q_conv1d = ShortConv(cfg.key_dim, cfg.conv_size)
            self.k_conv1d = ShortConv(cfg.key_dim, cfg.conv_size)
            self.v_conv1d = ShortConv(cfg.value_dim, cfg.conv_size)
        if cfg.use_output_gate:
            self.g_proj = nn.Linear(cfg.hidden_size, cfg.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=cfg.norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=cfg.norm_eps)
        self.o_proj = nn.Linear(cfg.value_dim, cfg.hidden_size, bias=False)
        self.track_eigenvalues = False
        self.eig_stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, state: DeltaNetState | None = None) -> tuple[torch.Tensor, DeltaNetState]:
        """x [B, T, D] -> (y [B, T, D], state after the last token)."""
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        conv_state = None
        if self.cfg.use_short_conv:
            cq, ck, cv = state.conv if state is not None else (None, None, None)
            q, cq = self.q_conv1d(q, cq)
            k, ck = self.k_conv1d(k, ck)
            v, cv = self.v_conv1d(v, cv)
            conv_state = (cq, ck, cv)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = q.view(B, T, self.num_heads, self.head_k_dim)
        k = k.view(B, T, self.num_heads, self.head_k_dim)
        v = v.view(B, T, self.num_heads, self.head_v_dim)
        beta = self.b_proj(x).sigmoid()  # [B, T, H]
        if self.cfg.allow_neg_eigval:
            beta = beta * 2
        if self.track_eigenvalues:
            self._record_eigenvalues(beta)
        o, recurrent = chunk_delta_rule(
            q, k, v, beta,
            initial_state=state.recurrent if state is not None else None,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
            backend=self.cfg.kernel_backend,
        )  # o [B, T, H, V]
        if self.cfg.use_output_gate:
            g = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim)
            o = self.o_norm(o, g)
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, -1)), DeltaNetState(recurrent, conv_state)

    @torch.no_grad()
    def _record_eigenvalues(self, beta: torch.Tensor) -> None:
        """Store, as tensors (no host sync here), the share of negative 1 - beta and its minimum."""
        eig = 1 - beta.detach().float()
        self.eig_stats = {"neg_eig_frac": (eig < 0).float().mean(), "min_eig": eig.min()}
