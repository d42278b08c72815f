"""Figures derived from a benchmark's raw results (ratios to the lower bound, composition over one copy) and the
targets they are checked against."""

from __future__ import annotations

from typing import Any

#: The issue's targets are stated for these context lengths and longer; shorter ones are shown, not judged.
TARGET_MIN_CONTEXT = 4096

def derive(results: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute every derived number (ratios, bandwidths, targets) from the raw measurements, in place.

    Idempotent: `run_benchmark` calls it, and so does the report when it re-renders saved results.
    """
    gpu = str(results["meta"]["system"].get("device", "cpu")).startswith("cuda")
    disk = results.get("disk")
    for case in results["cases"]:
        methods = case["methods"]
        lb = methods.get("lower_bound", {}).get("ttft", {}).get("median")
        for entry in methods.values():
            if lb and entry["ttft"].get("median"):
                entry["ratio_to_lower_bound"] = entry["ttft"]["median"] / lb
        comp = case["composition"]
        plain = min(comp[k]["median"] for k in ("plain_copy", "plain_copy_warm") if comp.get(k, {}).get("n"))
        comp["compose_over_plain_copy"] = comp["compose"]["median"] / plain  # against the faster (stricter) copy
        comp["plain_copy_bytes_per_s"] = case["cache_bytes"] / plain
        mem = case.get("memory")
        if mem and mem.get("compose") is not None:
            # GPU: the allocator counts the reserved free slots; CPU: pages never written are not resident
            final = case["cache_bytes"] + (case.get("reserved_bytes", 0) if gpu else 0)
            mem["compose_above_cache_in_layers"] = (mem["compose"] - final) / case["layer_bytes"]
        if "decode" in case:
            d = case["decode"]
            d["tokens_per_s"] = {k: d["tokens"] / v["median"] for k, v in d["seconds"].items()}
            d["ratio"] = d["tokens_per_s"]["kv_packet"] / d["tokens_per_s"]["dynamic_cache"]
        if "store" in case and "kv_packet_disk" in methods:
            st = case["store"]
            st["load_s"] = methods["kv_packet_disk"]["load"]["median"]
            st["bytes_per_s"] = st["file_bytes"] / st["load_s"]
            if disk:
                st["fraction_of_disk"] = st["bytes_per_s"] / disk["cold_bytes_per_s"]
    results["targets"] = evaluate_targets(results)
    return results


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked on these results (`ok` is `None` where a number is missing)."""
    rows = []

    def add(name: str, where: str, value: float | None, limit: str, ok: bool | None) -> None:
        rows.append({"target": name, "where": where, "value": value, "limit": limit, "ok": ok})

    for case in results["cases"]:
        if case["context_requested"] < TARGET_MIN_CONTEXT:
            continue
        where = f"{case['model']} @ {case['context_tokens']}"
        m = case["methods"]
        for name in ("kv_packet", "kv_packet_host"):
            r = m.get(name, {}).get("ratio_to_lower_bound")
            if r is not None:
                add(f"{name} TTFT / lower bound", where, r, "<= 1.10", r <= 1.10)
        comp = case["composition"]
        add("composition / plain copy", where, comp["compose_over_plain_copy"], "<= 2.0", comp["compose_over_plain_copy"] <= 2.0)
        if "decode" in case:
            r = case["decode"]["ratio"]
            add("decode tokens/s vs DynamicCache", where, r, ">= 0.95", r >= 0.95)
        if "store" in case and "fraction_of_disk" in case["store"]:
            f = case["store"]["fraction_of_disk"]
            add("store load / disk sequential read", where, f, ">= 0.50", f >= 0.5)
            add("store hit never re-encodes", where, 0.0, "0 re-encodes", not case["store"]["reencoded"])
        mem = case.get("memory", {})
        if mem.get("compose_above_cache_in_layers") is not None:
            v = mem["compose_above_cache_in_layers"]
            add("compose peak above final cache (layers)", where, v, "<= 1 layer", v <= 1.0)
    return rows
