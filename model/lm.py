"""The language model: embeddings, pre-norm residual blocks (mixer, optional SwiGLU MLP), final norm, LM head."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .attention import Attention
from .config import ModelConfig
from .lstm import LSTM
from .mlp import SwiGLU
from .norm import RMSNorm


def _build_mixer(cfg: ModelConfig) -> nn.Module:
    # imported here so that a mixer's kernels load only when a model uses it
    if cfg.mixer == "deltanet":
        from .deltanet import DeltaNet
        return DeltaNet(cfg)
    if cfg.mixer == "mamba":
        from .mamba import Mamba
        return Mamba(cfg)
    return Attention(cfg) if cfg.mixer == "attention" else LSTM(cfg)


class Block(nn.Module):
    """x + mixer(mixer_norm(x)), then, if cfg.mlp, x + mlp(mlp_norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mixer = _build_mixer(cfg)
        if cfg.mlp:
            self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
            self.mlp = SwiGLU(cfg.hidden_size, cfg.mlp_intermediate_size)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer(self.mixer_norm(x), state)
        x = x + y
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


class LanguageModel(nn.Module):
    """Causal LM over token ids; `state` (one entry per layer) continues a sequence across calls."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Normal(0, initializer_range) for Linear/Embedding weights and zero biases, then mixer-specific init."""
        std = self.config.initializer_range
        for module in self.modules():
            if getattr(module, "_own_init", False) or (module is self.lm_head and self.config.tie_embeddings):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2's residual scaling: every projection that writes into the residual stream is divided by
        # sqrt(number of residual branches), 2 per layer with an MLP (the usual 1/sqrt(2 N)), 1 without.
        branches = self.config.num_layers * (2 if self.config.mlp else 1)
        for block in self.layers:
            outs = [getattr(block.mixer, name) for name in ("o_proj", "out_proj") if hasattr(block.mixer, name)]
            if hasattr(block, "mlp"):
                outs.append(block.mlp.down_proj)
            for linear in outs:
                linear.weight.div_(math.sqrt(branches))

    def forward(self, input_ids: torch.Tensor, state: list | None = None, return_state: bool = False):
        """input_ids [B, T] -> fp32 logits [B, T, V], or (logits, per-layer state list) when return_state."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor [B, T], got "
                            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(input_ids.shape)}")
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} entries but the model has {len(self.layers)} layers; pass "
                             "the list a previous call returned")
        x = self.embeddings(input_ids)  # [B, T, D]
        new_state = []
        for i, block in enumerate(self.layers):
            x, layer_state = block(x, state[i] if state is not None else None)
            new_state.append(layer_state)
        logits = self.lm_head(self.norm(x)).float()  # [B, T, V]
        return (logits, new_state) if return_state else logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend input_ids [B, T] by up to max_new_tokens with the recurrent state; greedy at temperature 0.

        A row that has emitted eos_id keeps emitting it; generation stops early once every row has.
        Returns [B, T + generated].
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be a positive integer or None")
        tokens = input_ids
        if max_new_tokens == 0:
            return tokens
        logits, state = self(input_ids, return_state=True)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            nxt = self._pick(logits[:, -1], temperature, top_k, generator)  # [B]
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            tokens = torch.cat([tokens, nxt[:, None].to(tokens.dtype)], dim=1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                break
            logits, state = self(tokens[:, -1:], state=state, return_state=True)
        return tokens

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator | None) -> torch.Tensor:
        """Next token from logits [B, V]: argmax at temperature 0, else a sample from the (top-k) softmax."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]

    def num_params(self) -> int:
        """Number of distinct parameters (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def track_eigenvalues(self, flag: bool) -> None:
        """Turn on/off the recording of transition-eigenvalue statistics in every recurrent mixer."""
        for block in self.layers:
            if hasattr(block.mixer, "track_eigenvalues"):
                block.mixer.track_eigenvalues = bool(flag)
                block.mixer.eig_stats = {}

    def eigenvalue_stats(self) -> dict[str, float]:
        """{"layer{i}.neg_eig_frac": ..., "layer{i}.min_eig": ...} from the latest tracked forward."""
        stats = {}
        for i, block in enumerate(self.layers):
            for name, value in getattr(block.mixer, "eig_stats", {}).items():
                stats[f"layer{i}.{name}"] = float(value)
        return stats


def build_model(cfg: ModelConfig) -> LanguageModel:
    """Validate cfg and build the model on the CPU in fp32."""
    return LanguageModel(cfg)
