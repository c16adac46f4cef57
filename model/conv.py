"""Short causal depthwise convolution that carries its last inputs between calls for decoding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Conv1d):
    """Depthwise causal conv over time on channels-last input, optionally followed by SiLU.

    Subclasses nn.Conv1d so the parameters are `weight` [D, 1, K] and `bias` [D], as in fla's
    ShortConvolution and Mamba's conv1d. The state is the last K-1 inputs, [B, D, K-1].
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False, activation: bool = True):
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], state [B, D, K-1] or None (zeros) -> (y [B, T, D], new state [B, D, K-1])."""
        batch, _, channels = x.shape
        width = self.kernel_size[0] - 1
        x = x.transpose(1, 2)  # [B, D, T]
        if state is None:
            state = x.new_zeros(batch, channels, width)
        elif state.shape != (batch, channels, width):
            raise ValueError(f"conv state has shape {tuple(state.shape)}, expected {(batch, channels, width)}")
        full = torch.cat([state.to(x.dtype), x], dim=-1)  # [B, D, K-1+T]
        y = F.conv1d(full, self.weight, self.bias, groups=channels)  # [B, D, T]
        if self.activation:
            y = F.silu(y)
        return y.transpose(1, 2), full[..., full.shape[-1] - width:]
