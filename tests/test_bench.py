"""`kvpacket bench` smoke tests (tiny models, CPU, seconds; timings are never asserted). Composition has its own tests
(test_compose.py)."""

import json

import pytest
import torch

from hf_kvpacket.bench import BenchConfig, run_benchmark
from hf_kvpacket.bench.cli import add_arguments, main
from hf_kvpacket.bench.report import render_markdown, terminal_summary
from tiny_models import ToyTokenizer, build

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
        assert {"compose", "prefill"} <= set(methods["kv_packet"]) and "load" not in methods["kv_packet"]
        assert {"load", "compose", "prefill"} <= set(methods["kv_packet_disk"])
        assert set(case["composition"]) >= {"plain_copy", "plain_copy_warm", "compose", "compose_over_plain_copy"}
        assert case["decode"]["tokens_per_s"]["kv_packet"] > 0
        assert case["store"]["reencoded"] is False
        assert case["composed_slots"] > case["context_tokens"]  # adapter slots
    assert results["throughput"] and results["throughput"][0]["tokens_per_s"]["kv_packet"] > 0
    assert results["targets"] == []  # judged at 4K+ contexts only
    import hf_kvpacket.bench.targets as runner

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


def test_bench_obtains_every_document_packet_through_the_packet_store(monkeypatch):
    """`kvpacket bench` measures the user's path: its KV Packet methods compose packets a PacketStore served."""
    from store_spy import spy_on_store_and_cache

    served, composed = spy_on_store_and_cache(monkeypatch)
    run_benchmark(BenchConfig(models=["tiny"], **TINY), models={"tiny": (build("llama"), ToyTokenizer())})
    assert composed and all(id(p) in served for p in composed), "a document packet bypassed the PacketStore"


def test_bench_lines_are_the_baselines_registry_plus_bench_only_measurements():
    """One list of names and labels: the lines that answer are registry methods, labelled with their `display`."""
    from hf_kvpacket import baselines as bl
    from hf_kvpacket.bench import METHODS
    from hf_kvpacket.bench.methods import LABELS, LINES, BenchMethod, Measurement

    assert METHODS == ("full_prefill", "lower_bound", "kv_packet", "kv_packet_disk", "kv_packet_host", "cacheblend",
                       "epic")
    for name in METHODS:
        line = LINES[name]
        if isinstance(line, BenchMethod):
            assert LABELS[name].startswith(bl.METHODS[line.method].display)
        else:
            assert isinstance(line, Measurement) and name == "lower_bound"
    assert LABELS["kv_packet"] == "KV Packet (resident)" and LABELS["full_prefill"] == bl.FullRecompute.display
    assert {LABELS[m] for m in bl.RECOMPUTE_METHODS} == {bl.METHODS[m].display for m in bl.RECOMPUTE_METHODS}
