"""Each documented refusal raises its specific, actionable error (PITFALLS 1, 2, 5, 6, 7)."""

import pytest
import torch
import transformers as tf

from hf_kvpacket import (
    CacheReuseError,
    ContextTooLongError,
    EmptyQueryError,
    FingerprintMismatchError,
    PacketAdapter,
    PacketCache,
    RerotationGateError,
    UnsupportedModelError,
    cache_kwargs,
    encode_packets,
    get_rerotator,
)
from hf_kvpacket.rope import Rerotator
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import COMMON, build


@pytest.mark.parametrize("rope, word", [
    ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, "dynamic"),
])
def test_dynamic_rope_refused(rope, word):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON, rope_parameters=rope)).eval()
    with pytest.raises(UnsupportedModelError, match=word):
        encode_packets(model, DOCS, None)


def test_longrope_refused():
    cfg = tf.Phi3Config(**{**COMMON, "max_position_embeddings": 4096}, pad_token_id=0, original_max_position_embeddings=1024,
                        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                         "long_factor": [2.0] * 8})
    model = tf.Phi3ForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="longrope"):
        get_rerotator(model)


def test_model_without_rope_refused():
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(UnsupportedModelError, match="no rotary"):
        get_rerotator(model)


def test_mla_refused():
    model = build("llama")
    model.config.kv_lora_rank = 16
    with pytest.raises(UnsupportedModelError, match="latent"):
        Rerotator(model)


def test_mrope_refused():
    model = build("llama")
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    with pytest.raises(UnsupportedModelError, match="M-RoPE"):
        Rerotator(model)


def test_gate_catches_wrong_convention(monkeypatch):
    """A model rotating with another convention than rotate-half fails the gate instead of answering wrongly."""
    import transformers.models.llama.modeling_llama as ml

    def interleaved(x):
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    monkeypatch.setattr(ml, "rotate_half", interleaved)
    with pytest.raises(RerotationGateError, match="not exact"):
        get_rerotator(build("llama", seed=7))


def test_cache_used_twice_raises():
    model = build("llama")
    cache = PacketCache.from_packets(encode_packets(model, DOCS), model=model, preamble=PREAMBLE)
    model.generate(**cache.inputs_for(QUERY), max_new_tokens=2, pad_token_id=0)
    with pytest.raises(CacheReuseError):
        cache.inputs_for(QUERY)
    with pytest.raises(CacheReuseError):
        model(input_ids=torch.tensor([QUERY]), **cache_kwargs(cache))


def test_empty_query_raises():
    model = build("llama")
    cache = PacketCache.from_packets(encode_packets(model, DOCS), model=model, preamble=PREAMBLE)
    with pytest.raises(EmptyQueryError):
        cache.inputs_for([])


def test_packets_of_another_model_refused():
    a, b = build("llama", seed=0), build("llama", seed=1)
    packets = encode_packets(a, DOCS)
    with pytest.raises(FingerprintMismatchError, match="another model"):
        PacketCache.from_packets(packets, model=b)


def test_packets_of_another_dtype_refused():
    a = build("llama", seed=0)
    packets = encode_packets(a, DOCS)
    b = build("llama", torch.float64, seed=0)
    with pytest.raises(FingerprintMismatchError):
        PacketCache.from_packets(packets, model=b)


def test_packets_of_another_adapter_refused():
    model = build("llama")
    a1 = PacketAdapter.for_model(model, 2, 2, seed=1)
    a2 = PacketAdapter.for_model(model, 2, 2, seed=2)
    p1, p2 = encode_packets(model, DOCS[:1], a1), encode_packets(model, DOCS[1:2], a2)
    with pytest.raises(FingerprintMismatchError, match="different adapters"):
        PacketCache.from_packets(p1 + p2, model=model)
    with pytest.raises(FingerprintMismatchError, match="adapter"):
        PacketCache.from_packets(p1, model=model, adapter=a2)


def test_context_too_long_raises():
    model = build("llama")
    model.config.max_position_embeddings = 40
    from hf_kvpacket import rope
    rope._REROTATORS.pop(model, None)
    packets = encode_packets(model, DOCS)  # 38 slots
    cache = PacketCache.from_packets(packets, model=model)
    with pytest.raises(ContextTooLongError):
        cache.inputs_for(QUERY)
    with pytest.raises(ContextTooLongError):
        PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)


def test_fine_tune_changes_fingerprint():
    from hf_kvpacket import model_fingerprint
    model = build("llama")
    fp = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert model_fingerprint(model, refresh=True) != fp


def test_old_packet_format_refused():
    import dataclasses

    model = build("llama")
    old = dataclasses.replace(encode_packets(model, DOCS[:1])[0], format_version="0")
    with pytest.raises(FingerprintMismatchError, match="format version"):
        PacketCache.from_packets([old], model=model)


def test_no_delimiter_slots_between_packets():
    """PITFALL 12: composition adds no separator tokens; every slot is a preamble, adapter or document slot."""
    model = build("llama")
    adapter = PacketAdapter.for_model(model, 3, 2)
    packets = encode_packets(model, DOCS, adapter)
    cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    assert cache.composed_length == len(PREAMBLE) + sum(len(d) + 5 for d in DOCS)
    assert cache.get_seq_length() == cache.composed_length


@pytest.mark.parametrize("arch", ["llama", "gemma3", "yarn_scaling"])
def test_gate_passes_in_bfloat16(arch):
    """Rounding noise of bf16 models must not trip the gate (it did on Qwen2.5-0.5B layer 11 before the fix)."""
    get_rerotator(build(arch, torch.bfloat16, seed=3))


def test_gate_catches_wrong_convention_in_bfloat16(monkeypatch):
    import transformers.models.llama.modeling_llama as ml

    def interleaved(x):
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    monkeypatch.setattr(ml, "rotate_half", interleaved)
    with pytest.raises(RerotationGateError):
        get_rerotator(build("llama", torch.bfloat16, seed=8))
