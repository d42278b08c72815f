"""Composition (compose.py): direct vs staged composition, the naive reference (tests/reference_compose.py), in-place
appends into reserved slots (ComposedLayer), peak memory, and the rotation kernel the composition uses."""

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hf_kvpacket import PacketAdapter, PacketCache, cache_kwargs, encode_packets
from hf_kvpacket.rope import get_rerotator
from reference_compose import compose_naive
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import ARCHS, build


def _layers(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_direct_and_staged_composition_are_bit_identical(arch, dtype, monkeypatch):
    """CPU writes rotated keys straight from the packets; accelerators stage then rotate in place: same bits."""
    import hf_kvpacket.compose as compose_mod

    model = build(arch, dtype)
    packets = encode_packets(model, DOCS, PacketAdapter.for_model(model, 2, 1).to(dtype), progress=False)
    layouts = [packets, [[packets[0], packets[2]], [packets[1]], packets]]
    got = {}
    for direct in (True, False):
        monkeypatch.setattr(compose_mod.CompositionPlan, "direct_on_cpu", direct)
        got[direct] = [_layers(PacketCache.from_packets(rows, model=model, preamble=PREAMBLE)) for rows in layouts]
    for a, b in zip(got[True], got[False]):
        for (ka, va), (kb, vb) in zip(a, b):
            assert torch.equal(ka, kb) and torch.equal(va, vb)


@pytest.mark.parametrize("arch", ["llama", "partial_rotary", "llama3_scaling"])
def test_composition_matches_the_naive_reference(arch):
    model = build(arch, torch.float32)
    packets = encode_packets(model, DOCS, None, progress=False)
    pre = encode_packets(model, [PREAMBLE], None, progress=False)[0]
    cache = PacketCache.from_packets(packets, model=model, preamble=pre)
    naive = compose_naive(packets, pre, get_rerotator(model))
    for (k, v), (nk, nv) in zip(_layers(cache), naive):
        assert torch.equal(k, nk) and torch.equal(v, nv)


def _dynamic_copy(cache, config):
    out = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.clone(), layer.values.clone(), i)
    return out


def test_reserved_slots_append_in_place_and_decode_like_a_dynamic_cache():
    model = build("llama", torch.float32)
    packets = encode_packets(model, DOCS, None, progress=False)
    cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    from hf_kvpacket.compose import ComposedLayer

    assert all(type(layer) is ComposedLayer and isinstance(layer, DynamicLayer) for layer in cache.layers)
    plain = _dynamic_copy(cache, model.config)
    n = cache.composed_length
    ptr = cache.layers[0].keys.data_ptr()
    gen = dict(max_new_tokens=100, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    got = model.generate(**cache.inputs_for(QUERY), **gen)
    ref = model.generate(input_ids=torch.tensor([QUERY]), attention_mask=torch.ones(1, n + len(QUERY), dtype=torch.long),
                         position_ids=torch.arange(n, n + len(QUERY))[None], **cache_kwargs(plain), **gen)
    assert got.sequences.tolist() == ref.sequences.tolist()
    assert torch.equal(torch.stack(got.scores), torch.stack(ref.scores))
    layer = cache.layers[0]
    assert layer.keys.shape[-2] == n + len(QUERY) + 99 == plain.layers[0].keys.shape[-2]
    assert torch.equal(layer.keys, plain.layers[0].keys)
    assert layer.owns_views  # still appending in place (grew past the reserve once)
    assert layer.keys.data_ptr() != ptr  # ... after growing its buffer


def test_in_place_append_falls_back_after_crop_and_reorder():
    model = build("llama", torch.float32)
    packets = encode_packets(model, DOCS, None, progress=False)
    cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    with torch.no_grad():
        model(**cache.inputs_for(QUERY))
    before = cache.layers[0].keys
    snapshot = before.clone()
    cache.crop(-2)  # a view of the same buffer, shorter: the next append must not write over `before`
    k = torch.randn(1, 2, 1, 16)
    for i in range(len(cache.layers)):
        cache.layers[i].update(k, k)
    assert torch.equal(before, snapshot)
    assert not cache.layers[0].owns_views  # plain DynamicLayer.update from now on
    cache.reorder_cache(torch.tensor([0]))
    cache.layers[0].update(k, k)
    assert cache.layers[0].keys.shape[-2] == snapshot.shape[-2]


def test_composition_peak_memory_stays_near_the_final_cache():
    """Composition allocates the final buffers and tiny tables only (no concatenate-then-copy)."""
    from torch.utils._python_dispatch import TorchDispatchMode  # counts every tensor the composition allocates

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.empty.memory_format, torch.ops.aten.cat.default, torch.ops.aten.clone.default,
                        torch.ops.aten.zeros.default, torch.ops.aten.new_zeros.default):
                self.bytes += out.numel() * out.element_size()
            return out

    model = build("llama", torch.float32)
    docs = [[(i * 7 + j) % 120 + 1 for j in range(200)] for i in range(4)]
    packets = encode_packets(model, docs, None, progress=False)
    with Allocations() as alloc:
        cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
    final = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
    assert final <= alloc.bytes <= final + 64 * 1024


@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_rotate_keys_into_equals_in_place_rotation(rotary_dim):
    from hf_kvpacket.rope import rotate_keys_, rotate_keys_into, rotation_tables

    inv = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    keys = torch.randn(1, 2, 9, 16)
    deltas = torch.full((9,), 37)
    out = torch.full((1, 2, 12, 16), float("nan"))[:, :, 2:11]  # a view into a larger buffer
    rotate_keys_into(out, keys, *rotation_tables(deltas[:1], inv, keys.dtype, "cpu", full=True))
    ref = rotate_keys_(keys.clone(), *rotation_tables(deltas, inv, keys.dtype, "cpu"))
    assert torch.equal(out, ref)
