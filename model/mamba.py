"""Mamba-1 selective SSM mixer with transformers' MambaMixer parameter names, on our selective-scan kernel."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.selective_scan import selective_scan_fn, selective_state_update

from .config import ModelConfig
from .conv import ShortConv


@dataclass
class MambaState:
    """Decoding state: conv inputs [B, d_inner, conv_size-1] and SSM state [B, d_inner, n] (fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba(nn.Module):
    """h_t = a_t * h_{t-1} + delta_t B_t x_t, y_t = C_t h_t + D x_t, gated by SiLU(z).

    a_t = exp(delta_t A) in (0, 1), or 2 exp(delta_t A) - 1 in (-1, 1) when `allow_neg_eigval`
    (the kernel applies that mapping); A = -exp(A_log), delta = softplus(dt_proj(x) + dt_proj.bias).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_inner, n, rank = cfg.d_inner, cfg.state_size, cfg.mamba_dt_rank
        self.d_inner, self.state_size, self.dt_rank = d_inner, n, rank
        self.in_proj = nn.Linear(cfg.hidden_size, 2 * d_inner, bias=False)
        self.conv1d = ShortConv(d_inner, cfg.conv_size, bias=cfg.mamba_conv_bias)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.dt_proj._own_init = True  # initialised by reset_mamba_parameters, not the model's normal init
        self.A_log = nn.Parameter(torch.empty(d_inner, n))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.hidden_size, bias=False)
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True
        self.reset_mamba_parameters()
        self.track_eigenvalues = False
        self.eig_stats: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def reset_mamba_parameters(self) -> None:
        """Mamba-1's init: S4D-real A = -(1..n), D = 1, dt log-uniform in [dt_min, dt_max] via the bias."""
        cfg = self.cfg
        n = torch.arange(1, self.state_size + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        bound = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-bound, bound)
        log_lo, log_hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(self.d_inner, device=self.D.device) * (log_hi - log_lo) + log_lo)
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, x: torch.Tensor, state: MambaState | None = None) -> tuple[torch.Tensor, MambaState]:
        """x [B, T, D] -> (y [B, T, D], state after the last token)."""
        B, T, _ = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, d_inner] each
        xs, conv_state = self.conv1d(xs, state.conv if state is not None else None)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # [B, T, d_inner]; the bias goes to the kernel as delta_bias
        A = -torch.exp(self.A_log.float())  # [d_inner, n]
        if self.track_eigenvalues:
            self._record_eigenvalues(dt, A)
        common = dict(D=self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                      allow_neg_eigval=self.cfg.allow_neg_eigval)
        ssm = state.ssm if state is not None else None
        if T == 1:
            if ssm is None:
                ssm = x.new_zeros(B, self.d_inner, self.state_size, dtype=torch.float32)
            y, ssm = selective_state_update(ssm, xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], z=z[:, 0], **common)
            y = y.unsqueeze(1)  # [B, 1, d_inner]
        else:
            y, ssm = selective_scan_fn(
                xs.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2),
                z=z.transpose(1, 2), return_last_state=True, initial_state=ssm,
                backend=self.cfg.kernel_backend, **common,
            )  # y [B, d_inner, T]
            y = y.transpose(1, 2)
        return self.out_proj(y.to(x.dtype)), MambaState(conv_state, ssm)

    @torch.no_grad()
    def _record_eigenvalues(self, dt: torch.Tensor, A: torch.Tensor) -> None:
        """Share of negative decays and the smallest decay over (token, channel, state), without building them.

        Each decay falls as delta * |A| grows, so the minimum comes from the largest product, and a decay is
        negative exactly when |A| > ln 2 / delta (only possible with allow_neg_eigval).
        """
        delta = F.softplus(dt.detach().float() + self.dt_proj.bias.detach().float())  # [B, T, d_inner]
        abs_a = -A.detach()  # [d_inner, n]
        largest = (delta.amax(dim=(0, 1)) * abs_a.amax(dim=1)).max()
        if self.cfg.allow_neg_eigval:
            min_eig = 2 * torch.exp(-largest) - 1
            thresholds = (math.log(2) / delta).permute(2, 0, 1).reshape(self.d_inner, -1)  # [d_inner, B*T]
            sorted_a = abs_a.sort(dim=1).values.contiguous()
            at_most = torch.searchsorted(sorted_a, thresholds.contiguous(), right=True)  # [d_inner, B*T]
            neg_frac = (self.state_size - at_most).sum() / (at_most.numel() * self.state_size)
        else:
            min_eig = torch.exp(-largest)
            neg_frac = torch.zeros((), device=dt.device)
        self.eig_stats = {"neg_eig_frac": neg_frac.float(), "min_eig": min_eig}
