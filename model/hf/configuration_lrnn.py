"""Hugging Face configuration of an lrnn-neg language model (DeltaNet, Mamba, attention or LSTM blocks).

Copied verbatim next to exported weights and loaded with `trust_remote_code=True`; it needs only transformers >= 5.
Field names follow the training repository's `model.*` keys, except the three transformers itself reads
(`num_hidden_layers`, `tie_word_embeddings`, `layer_types`). Sizes that the repository derives
(`intermediate_size`, `dt_rank`) are stored resolved.
"""
from transformers import PreTrainedConfig

MIXERS = ("deltanet", "mamba", "attention", "lstm")


class LRNNConfig(PreTrainedConfig):
    """Architecture of the exported model; `allow_neg_eigval` extends the transition eigenvalues to [-1, 1]."""

    model_type = "lrnn"

    mixer: str = "deltanet"
    allow_neg_eigval: bool = False
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_heads: int = 4
    mlp: bool = True
    intermediate_size: int = 768
    tie_word_embeddings: bool = True
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    # deltanet
    expand_k: float = 1.0
    expand_v: float = 1.0
    use_short_conv: bool = True
    conv_size: int = 4
    use_output_gate: bool = False
    # mamba
    state_size: int = 16
    expand: int = 2
    dt_rank: int = 16
    mamba_conv_bias: bool = True
    # attention
    rope_theta: float = 10000.0
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer={self.mixer!r} is not one of {', '.join(MIXERS)}")
        super().__post_init__(**kwargs)

    @property
    def layer_types(self) -> list[str]:
        """What transformers' DynamicCache builds per layer: a KV cache for attention, conv + recurrent states else."""
        kind = "full_attention" if self.mixer == "attention" else "linear_attention"
        return [kind] * self.num_hidden_layers
