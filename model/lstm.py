"""LSTM mixer: a single-layer torch LSTM followed by an output projection, as a non-linear RNN baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig


@dataclass
class LSTMState:
    """Hidden and cell state after the last token, [1, B, D] each (torch.nn.LSTM's layout)."""

    h: torch.Tensor
    c: torch.Tensor


class LSTM(nn.Module):
    """torch.nn.LSTM(hidden, hidden) over the sequence, then o_proj back to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lstm = nn.LSTM(cfg.hidden_size, cfg.hidden_size, batch_first=True)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """x [B, T, D] -> (y [B, T, D], (h, c) after the last token)."""
        hc = (state.h, state.c) if state is not None else None
        y, (h, c) = self.lstm(x, hc)
        return self.o_proj(y), LSTMState(h, c)
