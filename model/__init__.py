"""The network: config, mixers (deltanet, mamba, attention, lstm), the language model and checkpoint loading."""
from .config import ModelConfig
from .lm import LanguageModel, build_model
from .loading import from_checkpoint

__all__ = ["ModelConfig", "LanguageModel", "build_model", "from_checkpoint"]
