"""`kvpacket bench` smoke tests (tiny models, CPU, seconds; timings are never asserted) and the composition internals
the benchmark drove: direct vs staged composition, the naive reference, in-place appends into reserved slots."""

import json

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hf_kvpacket import PacketAdapter, PacketCache, cache_kwargs, encode_packets
from hf_kvpacket.bench import BenchConfig, compose_naive, run_benchmark
from hf_kvpacket.bench.cli import add_arguments, main
from hf_kvpacket.bench.report import render_markdown, terminal_summary
from hf_kvpacket.rope import get_rerotator
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import ARCHS, ToyTokenizer, build

TINY = dict(contexts=[96], num_docs=3, query_tokens=5, preamble_tokens=4, header_tokens=2, trailer_tokens=2, reps=1,
            full_reps=1, warmup=1, decode_tokens=3, decode_reps=1, batch_size=2, batch_context=64, batch_new_tokens=2,
            batch_reps=1, progress=False)


# ---------------------------------------------------------------------------------------------------------- the bench


def _check_results(results, models):
    assert [c["model"] for c in results["cases"]] == models
    for case in results["cases"]:
        methods = case["methods"]
        for name in ("full_prefill", "lower_bound", "kv_packet", "kv_packet_disk"):
            assert methods[name]["ttft"]["n"] >= 1 and methods[name]["ttft"]["median"] > 0
            assert methods[name]["flops"] > 0
        assert "ratio_to_lower_bound" in methods["kv_packet"]
        assert methods["kv_packet"]["flops"] < methods["full_prefill"]["flops"]
        for name in ("cacheblend", "epic"):  # hf_kvpacket.baselines is part of the package
            assert name in case["skipped"] or methods[name]["flops"] > methods["kv_packet"]["flops"]
        assert set(case["composition"]) >= {"plain_copy", "plain_copy_warm", "compose", "compose_naive",
                                            "compose_over_plain_copy"}
        assert case["decode"]["tokens_per_s"]["kv_packet"] > 0
        assert case["store"]["reencoded"] is False
        assert case["composed_slots"] > case["context_tokens"]  # adapter slots
    assert results["throughput"] and results["throughput"][0]["tokens_per_s"]["kv_packet"] > 0
    assert results["targets"] == []  # judged at 4K+ contexts only
    import hf_kvpacket.bench.runner as runner

    old, runner.TARGET_MIN_CONTEXT = runner.TARGET_MIN_CONTEXT, 0
    try:
        targets = runner.evaluate_targets(results)
    finally:
        runner.TARGET_MIN_CONTEXT = old
    assert {t["target"] for t in targets} >= {"composition / plain copy", "kv_packet TTFT / lower bound",
                                              "decode tokens/s vs DynamicCache", "store hit never re-encodes"}
    json.dumps(results)  # JSON-able


def test_cli_smoke_suite_writes_json_and_docs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    docs = tmp_path / "docs"
    assert main(["--suite", "smoke", "--output", str(out), "--docs", str(docs), "--no-progress", "--threads", "1"]) == 0
    results = json.loads(out.read_text())
    _check_results(results, ["tiny-llama (random init, 2 layers)"])
    page = (docs / "performance.md").read_text()
    assert "kvpacket bench --suite smoke" in page and "query-only lower bound" in page
    assert (docs / "img" / "perf_ttft_tiny_llama_random_init_2_layers.png").stat().st_size > 0
    assert json.loads((docs / "img" / "perf_results.json").read_text())["cases"]
    assert "KV Packet (resident)" in capsys.readouterr().out


def test_cli_is_registered_and_parses():
    import argparse

    from hf_kvpacket.cli import build_parser

    args = build_parser().parse_args(["bench", "--model", "tiny-llama", "--contexts", "64", "128", "--methods",
                                      "lower_bound,kv_packet", "--adapter-tokens", "0", "0"])
    from hf_kvpacket.bench.cli import config_from_args

    cfg = config_from_args(args)
    assert cfg.models == ["tiny-llama"] and cfg.contexts == [64, 128] and cfg.methods == ["lower_bound", "kv_packet"]
    assert cfg.header_tokens == cfg.trailer_tokens == 0
    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(SystemExit):
        config_from_args(p.parse_args(["--methods", "nope"]))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_run_benchmark_on_tiny_models(arch):
    """A model built by tests/tiny_models.py (sliding window + per-layer-type RoPE for gemma3), given directly."""
    model = build(arch, torch.float32)
    results = run_benchmark(BenchConfig(models=[arch], **TINY), models={arch: (model, ToyTokenizer())})
    _check_results(results, [arch])
    page = render_markdown(results, [], "docs", "kvpacket bench ...")
    assert "## Targets" in page and arch in terminal_summary(results)


# ---------------------------------------------------------------------------------------------------------- composition


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
