"""Tiny random-init models built from configs (no download): used by the tests, the examples' fast mode and the
supported-models table (`python -m hf_kvpacket.support`)."""

from __future__ import annotations

import contextlib

import torch
import transformers as tf

__all__ = ["ARCHS", "COMMON", "REFUSED", "build", "float64_rotary", "ToyTokenizer", "example_model"]

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, attn_implementation="sdpa")


def _llama(**rope):
    return tf.LlamaForCausalLM, tf.LlamaConfig(**COMMON, **rope)


ARCHS = {
    "llama": lambda: _llama(),
    "qwen2": lambda: (tf.Qwen2ForCausalLM, tf.Qwen2Config(**COMMON)),
    "mistral_sliding": lambda: (tf.MistralForCausalLM, tf.MistralConfig(**COMMON, sliding_window=12)),
    "gemma3": lambda: (
        tf.Gemma3ForCausalLM,
        tf.Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, sliding_window=12,
                            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
    ),
    "partial_rotary": lambda: (tf.Phi3ForCausalLM, tf.Phi3Config(**COMMON, partial_rotary_factor=0.5, pad_token_id=0)),
    "llama3_scaling": lambda: _llama(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}),
    "yarn_scaling": lambda: _llama(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024}),
    "linear_scaling": lambda: _llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
}


#: Families refused by design, with the config that shows it (used by the supported-models table).
REFUSED = {
    "dynamic_ntk": lambda: _llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    "longrope": lambda: (tf.Phi3ForCausalLM, tf.Phi3Config(**COMMON, pad_token_id=0,
                                                            original_max_position_embeddings=1024,
                                                            rope_parameters={"rope_type": "longrope",
                                                                             "rope_theta": 10000.0,
                                                                             "short_factor": [1.0] * 8,
                                                                             "long_factor": [2.0] * 8})),
    "gpt2_absolute_positions": lambda: (tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2)),
}


def build(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    cls, cfg = {**ARCHS, **REFUSED}[arch]()
    torch.manual_seed(seed)
    model = cls(cfg).eval().to(dtype)
    return model


@contextlib.contextmanager
def float64_rotary(model):
    """Make the model's rotary embedding compute its angles in float64 (transformers uses float32 even in fp64)."""
    mods = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]

    def make(mod):
        def forward(x, position_ids, layer_type=None):
            prefix = f"{layer_type}_" if layer_type else ""
            inv = getattr(mod, f"{prefix}inv_freq").double()
            scale = getattr(mod, f"{prefix}attention_scaling")
            freqs = position_ids.double()[..., None] * inv
            emb = torch.cat([freqs, freqs], dim=-1)
            return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)
        return forward

    for m in mods:
        m.forward = make(m)
    try:
        yield model
    finally:
        for m in mods:
            del m.forward


class ToyTokenizer:
    """Deterministic word-level tokenizer for tiny models (ids in 1..127; 0 is padding). No chat template."""

    pad_token_id = 0
    eos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=False, **kwargs):
        return {"input_ids": [sum(map(ord, w)) % 127 + 1 for w in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"<{int(i)}>" for i in ids)


def example_model(fast: bool, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for the examples: a tiny random Llama in fast mode, else SmolLM2-135M-Instruct offline."""
    if fast:
        return build("llama", dtype), ToyTokenizer()
    from .offline_models import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m-instruct", dtype=dtype)
