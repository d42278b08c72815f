"""generate() with a PacketCache == generate() driven by the reference (one block-diagonal forward) cache."""

import pytest
import torch
from transformers import DynamicCache

from hf_kvpacket import PacketAdapter, PacketCache, cache_kwargs, encode_packets, output_cache
from hf_kvpacket.layout import block_forward, wrapped_sequence
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import build, float64_rotary

GEN = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)


def reference_generate(model, adapter, docs, query, **gen):
    """Context cache from one block-diagonal forward (independent of stitching), then ordinary generate()."""
    embeds, blocks = wrapped_sequence(model, PREAMBLE, docs, [], adapter)
    with torch.no_grad():
        out = block_forward(model, embeds, blocks, use_cache=True, **cache_kwargs(DynamicCache(config=model.config)))
    cache, n = output_cache(out), embeds.shape[1]
    # generate() does not expand a pre-filled cache for beams / return sequences: do it by hand for the reference.
    expand = gen.get("num_beams", 1) if gen.get("num_beams", 1) > 1 else gen.get("num_return_sequences", 1)
    cache.batch_repeat_interleave(expand)
    ids = torch.tensor([query])
    return model.generate(input_ids=ids, attention_mask=torch.ones(1, n + len(query), dtype=torch.long),
                          position_ids=torch.arange(n, n + len(query))[None], **cache_kwargs(cache), **gen)


@pytest.fixture(params=["llama", "mistral_sliding", "gemma3"])
def setup(request):
    model = build(request.param, torch.float64)
    adapter = PacketAdapter.for_model(model, 3, 2).double()
    with float64_rotary(model):
        yield model, adapter, encode_packets(model, DOCS, adapter)


@pytest.mark.parametrize("gen", [dict(), dict(num_beams=3), dict(num_beams=2, num_return_sequences=2)],
                         ids=["greedy", "beams", "beams+returns"])
def test_generate_matches_reference(setup, gen):
    model, adapter, packets = setup
    cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    got = model.generate(**cache.inputs_for(QUERY), **GEN, **gen)
    ref = reference_generate(model, adapter, DOCS, QUERY, **GEN, **gen)
    assert got.tolist() == ref.tolist()


def test_batch_with_different_packets_per_row():
    model = build("llama", torch.float64)
    adapter = PacketAdapter.for_model(model, 3, 2).double()
    with float64_rotary(model):
        p = encode_packets(model, DOCS, adapter)
        rows = [[p[0], p[2]], [p[1]], [p[2], p[1], p[0]]]
        row_docs = [[DOCS[0], DOCS[2]], [DOCS[1]], [DOCS[2], DOCS[1], DOCS[0]]]
        queries = [QUERY, QUERY[:3], QUERY[1:]]
        cache = PacketCache.from_packets(rows, model=model, preamble=PREAMBLE)
        got = model.generate(**cache.inputs_for(queries), **GEN)
        for r in range(3):
            ref = reference_generate(model, adapter, row_docs[r], queries[r], **GEN)
            new_got = got[r, -GEN["max_new_tokens"]:].tolist()
            assert new_got == ref[0, -GEN["max_new_tokens"]:].tolist(), f"row {r}"


def test_sampling_runs_and_is_seeded():
    model = build("qwen2", torch.float32)
    packets = encode_packets(model, DOCS, None)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
        outs.append(model.generate(**cache.inputs_for(QUERY), max_new_tokens=6, do_sample=True, top_k=20,
                                   pad_token_id=0).tolist())
    assert outs[0] == outs[1]


def test_packets_are_not_mutated_by_generate():
    model = build("llama", torch.float32)
    packets = encode_packets(model, DOCS, None)
    before = [k.clone() for k in packets[0].keys]
    cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    model.generate(**cache.inputs_for(QUERY), **GEN)
    assert all(torch.equal(a, b) for a, b in zip(before, packets[0].keys))
    assert packets[0].length == len(DOCS[0])
