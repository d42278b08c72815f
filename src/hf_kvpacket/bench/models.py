"""Models for the benchmark: a real model (offline registry name, folder or Hub id) or a config-only shape with
random weights (no download; e.g. Llama-3.1-8B's shape on a machine that cannot fetch it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .runner import BenchConfig

#: Config-only model shapes (random init, no download). `--num-layers` shrinks a shape to fit a small machine.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.1-8b": ("LlamaForCausalLM", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "llama-3.2-1b": ("LlamaForCausalLM", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "qwen2.5-7b": ("Qwen2ForCausalLM", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "tiny-llama": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=4096)),
}

from ..hardware import DTYPE_NAMES as DTYPES  # noqa: E402


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(name: str, cfg: "BenchConfig", device: torch.device) -> tuple[nn.Module, Any, str]:
    """A real model (offline registry name, folder or Hub id) or, with `config_only`, a random-init shape."""
    dtype = DTYPES[cfg.dtype]
    if cfg.config_only or name in SHAPES:
        import transformers

        if name not in SHAPES:
            raise ValueError(f"Unknown config-only shape {name!r}; known: {', '.join(SHAPES)}.")
        cls_name, kwargs = SHAPES[name]
        kwargs = dict(kwargs)
        if cfg.num_layers:
            kwargs["num_hidden_layers"] = cfg.num_layers
        cls = getattr(transformers, cls_name)
        config = cls.config_class(**kwargs, attn_implementation="sdpa")
        torch.manual_seed(cfg.seed)
        with torch.device(device):  # initialised in place, in the target dtype (an 8B shape never exists in fp32)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        model = model.eval()
        label = f"{name} (random init, {config.num_hidden_layers} layers)"
        return model, None, label
    from ..offline_models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name, dtype=dtype)
    model = model.to(device).eval()
    if cfg.num_layers:
        raise ValueError("--num-layers applies to config-only shapes only.")
    return model, tok, name
