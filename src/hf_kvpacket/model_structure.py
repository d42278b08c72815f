"""Where things are inside a transformers model (one place for it): text config, decoder, decoder layers, head dim.

Works for plain causal LMs, multimodal wrappers (their text config) and `peft.PeftModel` (its base model).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import UnsupportedModelError


def text_config(model_or_config: Any) -> Any:
    """The decoder's text config of a model or config (multimodal configs nest it)."""
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a `peft.PeftModel` (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (e.g. `LlamaModel`) of a causal LM: the module that owns embeddings, layers and norm."""
    base = base_model(model)
    return base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", base)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers (for per-layer devices under `device_map`)."""
    layers = getattr(decoder(model), "layers", None)
    if layers is None:
        raise UnsupportedModelError(f"Cannot find the decoder layers of {type(base_model(model)).__name__}.")
    return layers


def head_dim(config: Any) -> int:
    """Per-head width: `config.head_dim` where set, else hidden size / attention heads."""
    value = getattr(config, "head_dim", None)
    return value if value else config.hidden_size // config.num_attention_heads


__all__ = ["text_config", "base_model", "decoder", "decoder_layers", "head_dim"]
