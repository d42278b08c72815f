"""Stitched packets == one forward with the block-diagonal mask and contiguous positions, per architecture."""

import pytest
import torch

from hf_kvpacket import PacketAdapter, PacketCache, encode_packets
from hf_kvpacket.layout import block_forward, wrapped_sequence
from tiny_models import ARCHS, build, float64_rotary

TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
PREAMBLE = [5, 9, 17, 3, 22]
DOCS = [[30 + i for i in range(7)], [60 + (i * 7) % 50 for i in range(11)], [(i * 13) % 120 + 1 for i in range(20)]]
QUERY = [101, 7, 44, 12, 90, 3]


def stitched_logits(model, adapter, preamble=PREAMBLE, docs=DOCS, query=QUERY):
    packets = encode_packets(model, docs, adapter, batch_size=2)
    cache = PacketCache.from_packets(packets, model=model, preamble=preamble)
    with torch.no_grad():
        return model(**cache.inputs_for(query)).logits[0]


def reference_logits(model, adapter, preamble=PREAMBLE, docs=DOCS, query=QUERY):
    embeds, blocks = wrapped_sequence(model, preamble, docs, query, adapter)
    with torch.no_grad():
        return block_forward(model, embeds, blocks).logits[0, -len(query):]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_stitched_equals_block_diagonal_forward(arch, dtype):
    model = build(arch, dtype)
    adapter = PacketAdapter.for_model(model, num_header_tokens=3, num_trailer_tokens=2).to(dtype)
    with float64_rotary(model) if dtype == torch.float64 else torch.no_grad():
        got = stitched_logits(model, adapter)
        ref = reference_logits(model, adapter)
    err = (got - ref).abs().max().item()
    assert err <= TOL[dtype], f"{arch} {dtype}: max abs logit diff {err:.3e}"


@pytest.mark.parametrize("arch", ["llama", "mistral_sliding", "gemma3"])
def test_long_offsets_fp32(arch):
    """Packets far from position 0 (float32 angle rounding grows with the position)."""
    model = build(arch, torch.float32)
    docs = [[(i * 7 + j) % 120 + 1 for j in range(300)] for i in range(4)]
    got = stitched_logits(model, None, docs=docs)
    ref = reference_logits(model, None, docs=docs)
    assert (got - ref).abs().max().item() <= 1e-4


def test_single_packet_equals_plain_prefill():
    """One unwrapped packet at offset 0 + query == a plain causal prefill of the same tokens."""
    model = build("llama", torch.float64)
    with float64_rotary(model):
        doc = DOCS[2]
        got = stitched_logits(model, None, preamble=[], docs=[doc])
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([doc + QUERY])).logits[0, -len(QUERY):]
    assert (got - ref).abs().max().item() <= 1e-9


def test_preamble_plus_segment_equals_plain_prefill():
    """A preamble and an in-place text segment are ordinary causal prefill."""
    from types import SimpleNamespace

    model = build("qwen2", torch.float64)
    tok = lambda text, add_special_tokens=False: {"input_ids": [int(t) for t in text.split()]}  # noqa: E731
    with float64_rotary(model):
        cache = PacketCache.from_packets([" ".join(map(str, DOCS[1]))], model=model, tokenizer=tok, preamble=PREAMBLE)
        with torch.no_grad():
            got = model(**cache.inputs_for(QUERY)).logits[0]
            ref = model(input_ids=torch.tensor([PREAMBLE + DOCS[1] + QUERY])).logits[0, -len(QUERY):]
    assert (got - ref).abs().max().item() <= 1e-9


def test_segment_between_packets_matches_reference():
    """Packets, then a text segment in place, then a packet: mixed layout equals the block reference."""
    model = build("llama", torch.float64)
    adapter = PacketAdapter.for_model(model, 2, 2).double()
    tok = lambda text, add_special_tokens=False: {"input_ids": [int(t) for t in text.split()]}  # noqa: E731
    segment = [11, 12, 13]
    with float64_rotary(model):
        p = encode_packets(model, [DOCS[0], DOCS[1]], adapter)
        cache = PacketCache.from_packets([p[0], "11 12 13", p[1]], model=model, tokenizer=tok, preamble=PREAMBLE)
        with torch.no_grad():
            got = model(**cache.inputs_for(QUERY)).logits[0]
        # reference: segment tokens are joint (see everything before them)
        e1, b1 = wrapped_sequence(model, PREAMBLE, [DOCS[0]], segment, adapter)
        e2, b2 = wrapped_sequence(model, [], [DOCS[1]], QUERY, adapter)
        b2 = torch.where(b2 > 0, b2 + 10, b2)
        with torch.no_grad():
            ref = block_forward(model, torch.cat([e1, e2], 1), torch.cat([b1, b2], 1)).logits[0, -len(QUERY):]
    assert (got - ref).abs().max().item() <= 1e-9
