"""The benchmark's tables (Markdown) and the lines around them, from results as `run_benchmark` returns them.

Methods are named by :data:`hf_kvpacket.bench.methods.LABELS` (the baselines registry's names, and the bench-only
measurements'); the page around the tables is in `report.py`.
"""

from __future__ import annotations

import re
from typing import Any

from .methods import LABELS, METHODS


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms"


def _fmt_flops(x: float | None) -> str:
    if not x:
        return "–"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def _fmt_bytes(x: float | None) -> str:
    if x is None:
        return "–"
    sign = "-" if x < 0 else ""
    x = abs(x)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{sign}{x / scale:.1f} {unit}"
    return f"{sign}{x:.0f} B"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _models(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for case in results["cases"]:
        if case["model"] not in seen:
            seen.append(case["model"])
    return seen


def load_line(results: dict[str, Any]) -> str:
    load = results["meta"].get("load", {})
    other = load.get("other_cores")
    parts = []
    if other is not None:
        parts.append(f"other processes used {other:.2f} cores on average during the run")
    if load.get("loadavg_start") is not None:
        parts.append(f"1-min load average {load['loadavg_start']:.2f} at start, {load.get('loadavg_end') or 0:.2f} at end")
    text = "; ".join(parts)
    if load.get("loaded"):
        return (f"**The machine was loaded** ({text}): absolute times are disturbed; ratios were measured side by side "
                "(interleaved repetitions, medians) and are the numbers to read. Re-run on a quiet machine for absolute times.")
    return f"Machine load: {text}." if text else ""


# ---------------------------------------------------------------------------------------------------------- tables


def summary_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per (model, context), TTFT median of each method and its ratio to the lower bound."""
    methods = [m for m in METHODS if any(m in c["methods"] for c in results["cases"])]
    head = "| model | context | " + " | ".join(LABELS[m] for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for case in results["cases"]:
        cells = []
        for m in methods:
            e = case["methods"].get(m)
            if not e or not e["ttft"].get("n"):
                cells.append("–")
                continue
            r = e.get("ratio_to_lower_bound")
            cells.append(f"{_fmt_s(e['ttft']['median'])}" + (f" ({r:.2f}×)" if r is not None and m != "lower_bound" else ""))
        lines.append(f"| {case['model']} | {case['context_tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_lines(results: dict[str, Any], threshold: float = 0.10) -> str:
    """Flag cases whose lower bound or KV Packet times spread widely (interquartile range > 10% of the median)."""
    out = []
    for case in results["cases"]:
        spread = []
        for m in ("lower_bound", "kv_packet"):
            t = case["methods"].get(m, {}).get("ttft", {})
            if t.get("n", 0) >= 2 and t["iqr"] > threshold * t["median"]:
                spread.append(f"{LABELS[m]} interquartile range {t['iqr'] / t['median']:.0%} of its median")
        if spread:
            out.append(f"- {case['model']} @ {case['context_tokens']:,}: " + ", ".join(spread)
                       + " (bursts of load elsewhere): read that ratio with care.")
    return "\n".join(out)


def skipped_lines(results: dict[str, Any]) -> str:
    seen: dict[str, str] = {}
    for case in results["cases"]:
        for name, why in (case.get("skipped") or {}).items():
            seen.setdefault(f"{LABELS.get(name, name)} ({case['model']})", why)
    return "\n".join(f"- {k} was not run: {v}" for k, v in seen.items())


def capped_line(results: dict[str, Any]) -> str:
    capped = sorted({(c["model"], c["context_requested"], c["context_tokens"]) for c in results["cases"]
                     if c["context_tokens"] < c["context_requested"] - c["documents"]})
    if not capped:
        return ""
    return (" Contexts capped to fit `max_position_embeddings` together with the adapter slots, the query and the decoded "
            "tokens: " + ", ".join(f"{m} {r:,} → {u:,}" for m, r, u in capped) + ".")


def key_findings(results: dict[str, Any]) -> str:
    """One bullet per model at its longest context: the numbers a reader wants first."""
    lines = []
    for model in _models(results):
        cases = [c for c in results["cases"] if c["model"] == model]
        case = max(cases, key=lambda c: c["context_tokens"])
        m, comp = case["methods"], case["composition"]
        bits = []
        kv, full, lb = (m.get(k, {}).get("ttft", {}).get("median") for k in ("kv_packet", "full_prefill", "lower_bound"))
        if kv and full:
            bits.append(f"KV Packet TTFT {_fmt_s(kv)} vs {LABELS['full_prefill']} {_fmt_s(full)} ({full / kv:.0f}× faster)")
        if kv and lb:
            bits.append(f"{kv / lb:.2f}× the query-only lower bound ({_fmt_s(lb)})")
        bits.append(f"composition {comp['compose_over_plain_copy']:.2f}× a plain copy of the cache")
        if "decode" in case:
            bits.append(f"decoding {case['decode']['ratio']:.2f}× the tokens/s of a DynamicCache")
        if case.get("store", {}).get("fraction_of_disk") is not None:
            bits.append(f"store loads at {case['store']['fraction_of_disk']:.0%} of the disk's sequential read")
        lines.append(f"- **{model}, {case['context_tokens']:,} tokens:** " + "; ".join(bits) + ".")
    return "\n".join(lines)


def phases_table(results: dict[str, Any]) -> str:
    lines = ["| model | context | cache slots | KV bytes | load (disk) | compose | query prefill | KV Packet TTFT | lower bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        m = case["methods"]
        kv = m.get("kv_packet", {})
        disk = m.get("kv_packet_disk", {})
        lines.append(
            f"| {case['model']} | {case['context_tokens']:,} | {case['composed_slots']:,} | {_fmt_bytes(case['cache_bytes'])} "
            f"| {_fmt_s(disk.get('load', {}).get('median'))} | {_fmt_s(kv.get('compose', {}).get('median'))} "
            f"| {_fmt_s(kv.get('prefill', {}).get('median'))} | {_fmt_s(kv.get('ttft', {}).get('median'))} "
            f"| {_fmt_s(m.get('lower_bound', {}).get('ttft', {}).get('median'))} |")
    return "\n".join(lines)


def composition_table(results: dict[str, Any]) -> str:
    lines = ["| model | context | KV bytes | plain copy (fresh / warm memory) | composition | composition / copy "
             "| copy bandwidth |",
             "|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        c = case["composition"]
        warm = c.get("plain_copy_warm", {}).get("median")
        lines.append(
            f"| {case['model']} | {case['context_tokens']:,} | {_fmt_bytes(case['cache_bytes'])} "
            f"| {_fmt_s(c['plain_copy']['median'])} / {_fmt_s(warm)} | {_fmt_s(c['compose']['median'])} "
            f"| {c['compose_over_plain_copy']:.2f}× | {c['plain_copy_bytes_per_s'] / 1e9:.1f} GB/s |")
    return "\n".join(lines)


def flops_table(results: dict[str, Any]) -> str:
    methods = [m for m in METHODS if any(m in c["methods"] for c in results["cases"])]
    lines = ["| model | context | " + " | ".join(LABELS[m] for m in methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for case in results["cases"]:
        cells = [_fmt_flops(case["methods"].get(m, {}).get("flops")) for m in methods]
        lines.append(f"| {case['model']} | {case['context_tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(results: dict[str, Any]) -> str:
    cases = [c for c in results["cases"] if "memory" in c]
    if not cases:
        return "_Memory was not measured (`--no-memory`)._"
    methods = [m for m in METHODS if any(m in c["memory"] for c in cases)]
    lines = ["| model | context | final cache (+ reserved slots) | compose peak | compose above "
             "cache + reserve | " + " | ".join(f"{LABELS[m]} peak" for m in methods) + " |",
             "|" + "---|" * (len(methods) + 5)]
    for case in cases:
        mem = case["memory"]
        above = mem.get("compose_above_cache_in_layers")
        reserved = case.get("reserved_bytes")
        lines.append(
            f"| {case['model']} | {case['context_tokens']:,} | {_fmt_bytes(case['cache_bytes'])}"
            + (f" (+ {_fmt_bytes(reserved)})" if reserved else "") + " "
            f"| {_fmt_bytes(mem.get('compose'))} "
            f"| {'–' if above is None else f'{above:+.2f} layers'} | "
            + " | ".join(_fmt_bytes(mem.get(m)) for m in methods) + " |")
    how = cases[0]["memory"].get("method", "")
    return "\n".join(lines) + f"\n\nPeak memory above the level before each call, measured with: {how}."


def decode_table(results: dict[str, Any]) -> str:
    cases = [c for c in results["cases"] if "decode" in c]
    if not cases:
        return "_Decoding was not measured._"
    lines = ["| model | context | tokens | PacketCache tok/s | DynamicCache tok/s | ratio |", "|---|---|---|---|---|---|"]
    for case in cases:
        d = case["decode"]
        lines.append(f"| {case['model']} | {case['context_tokens']:,} | {d['tokens']} | {d['tokens_per_s']['kv_packet']:.2f} "
                     f"| {d['tokens_per_s']['dynamic_cache']:.2f} | {d['ratio']:.3f} |")
    return "\n".join(lines)


def store_table(results: dict[str, Any]) -> str:
    cases = [c for c in results["cases"] if "store" in c]
    disk = results.get("disk")
    if not cases or not disk:
        return "_The store was not measured._"
    lines = [f"Disk sequential read (same script, {_fmt_bytes(disk['file_bytes'])} file, page cache dropped): "
             f"**{disk['cold_bytes_per_s'] / 1e9:.2f} GB/s** cold, {disk['warm_bytes_per_s'] / 1e9:.2f} GB/s from the page cache.",
             "", "| model | context | packet files | load (cold) | load bandwidth | fraction of disk | re-encoded |",
             "|---|---|---|---|---|---|---|"]
    for case in cases:
        s = case["store"]
        frac = s.get("fraction_of_disk")
        lines.append(f"| {case['model']} | {case['context_tokens']:,} | {_fmt_bytes(s['file_bytes'])} | {_fmt_s(s['load_s'])} "
                     f"| {s['bytes_per_s'] / 1e9:.2f} GB/s | {'–' if frac is None else f'{frac:.0%}'} "
                     f"| {'yes' if s['reencoded'] else 'never'} |")
    return "\n".join(lines)


def throughput_table(results: dict[str, Any]) -> str:
    tps = results.get("throughput") or []
    if not tps:
        return "_Batched throughput was not measured._"
    lines = ["| model | batch | context per row | new tokens | KV Packet tok/s | full prefill tok/s | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for t in tps:
        lines.append(f"| {t['model']} | {t['batch_size']} | {t['context_tokens']:,} | {t['new_tokens']} "
                     f"| {t['tokens_per_s']['kv_packet']:.2f} | {t['tokens_per_s']['full_prefill']:.2f} | {t['speedup']:.1f}× |")
    return "\n".join(lines)


def targets_table(results: dict[str, Any]) -> str:
    rows = results.get("targets") or []
    lines = ["| target | where | measured | limit | holds |", "|---|---|---|---|---|"]
    for r in rows:
        v = r["value"]
        ok = {True: "yes", False: "**no**", None: "–"}[r["ok"]]
        if r["target"].startswith("store hit"):
            value = "0 re-encodes"
        elif "fraction" in r["target"] or "disk" in r["target"]:
            value = f"{v:.0%}"
        else:
            value = f"{v:.3f}" if v is not None else "–"
        lines.append(f"| {r['target']} | {r['where']} | {value} | {r['limit']} | {ok} |")
    return "\n".join(lines)
