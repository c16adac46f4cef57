"""RMSNorm layers that normalise in fp32 whatever the input dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dimension, computed in fp32 and returned in x's dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * SiLU(g), as fla's FusedRMSNormGated with its default swish gate."""

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (self._normalise(x) * F.silu(g.float())).to(x.dtype)
