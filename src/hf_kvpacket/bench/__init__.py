"""Benchmarks of KV Packet: TTFT against a full prefill and the query-only lower bound, composition cost, decoding,
store loading, batched throughput, analytic FLOPs and peak memory (`kvpacket bench`, see `docs/performance.md`).

Example
-------
>>> from hf_kvpacket.bench import BenchConfig, run_benchmark
>>> results = run_benchmark(BenchConfig(models=["smollm2-135m-instruct"], contexts=[4096]))
>>> results["cases"][0]["methods"]["kv_packet"]["ratio_to_lower_bound"]
"""

from .runner import COMPOSITION, METHODS, SHAPES, BenchConfig, derive, evaluate_targets, run_benchmark

__all__ = ["BenchConfig", "run_benchmark", "derive", "evaluate_targets", "METHODS", "COMPOSITION", "SHAPES"]
