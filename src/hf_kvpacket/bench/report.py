"""Tables and plots from benchmark results: a terminal summary and `docs/performance.md` with `docs/img/perf_*.png`.

`python -m hf_kvpacket.bench.report docs/img/perf_results.json --docs docs` re-renders the page from saved results without
measuring again (`kvpacket bench ... --docs docs` measures and renders in one go).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from ..baselines import METHODS, RECOMPUTE_METHODS

LABELS = {
    "full_prefill": "full prefill",
    "lower_bound": "query-only lower bound",
    "kv_packet": "KV Packet (resident)",
    "kv_packet_disk": "KV Packet (from disk)",
    "kv_packet_host": "KV Packet (pinned host)",
    # the recompute baselines are named where they are defined
    **{name: METHODS[name].display for name in RECOMPUTE_METHODS},
}


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
    methods = [m for m in LABELS if any(m in c["methods"] for c in results["cases"])]
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
            bits.append(f"KV Packet TTFT {_fmt_s(kv)} vs full prefill {_fmt_s(full)} ({full / kv:.0f}× faster)")
        if kv and lb:
            bits.append(f"{kv / lb:.2f}× the query-only lower bound ({_fmt_s(lb)})")
        bits.append(f"composition {comp['compose_over_plain_copy']:.2f}× a plain copy of the cache "
                    f"(naive: {comp['naive_over_plain_copy']:.2f}×)")
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
    lines = ["| model | context | KV bytes | plain copy (fresh / warm memory) | composition (now) "
             "| composition (naive, before) | now / copy | before / copy | copy bandwidth |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        c = case["composition"]
        warm = c.get("plain_copy_warm", {}).get("median")
        lines.append(
            f"| {case['model']} | {case['context_tokens']:,} | {_fmt_bytes(case['cache_bytes'])} "
            f"| {_fmt_s(c['plain_copy']['median'])} / {_fmt_s(warm)} | {_fmt_s(c['compose']['median'])} "
            f"| {_fmt_s(c['compose_naive']['median'])} | {c['compose_over_plain_copy']:.2f}× "
            f"| {c['naive_over_plain_copy']:.2f}× | {c['plain_copy_bytes_per_s'] / 1e9:.1f} GB/s |")
    return "\n".join(lines)


def flops_table(results: dict[str, Any]) -> str:
    methods = [m for m in LABELS if any(m in c["methods"] for c in results["cases"])]
    lines = ["| model | context | " + " | ".join(LABELS[m] for m in methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for case in results["cases"]:
        cells = [_fmt_flops(case["methods"].get(m, {}).get("flops")) for m in methods]
        lines.append(f"| {case['model']} | {case['context_tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(results: dict[str, Any]) -> str:
    cases = [c for c in results["cases"] if "memory" in c]
    if not cases:
        return "_Memory was not measured (`--no-memory`)._"
    methods = [m for m in LABELS if any(m in c["memory"] for c in cases)]
    lines = ["| model | context | final cache (+ reserved slots) | compose peak | naive compose peak | compose above "
             "cache + reserve | " + " | ".join(f"{LABELS[m]} peak" for m in methods) + " |",
             "|" + "---|" * (len(methods) + 6)]
    for case in cases:
        mem = case["memory"]
        above = mem.get("compose_above_cache_in_layers")
        reserved = case.get("reserved_bytes")
        lines.append(
            f"| {case['model']} | {case['context_tokens']:,} | {_fmt_bytes(case['cache_bytes'])}"
            + (f" (+ {_fmt_bytes(reserved)})" if reserved else "") + " "
            f"| {_fmt_bytes(mem.get('compose'))} | {_fmt_bytes(mem.get('compose_naive'))} "
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


def terminal_summary(results: dict[str, Any]) -> str:
    info = results["meta"]["system"]
    parts = [info["device_line"], f"torch {info['torch']}, transformers {info['transformers']}", load_line(results), "",
             summary_table(results), "", composition_table(results), "", targets_table(results)]
    return "\n".join(p for p in parts if p is not None)


# ---------------------------------------------------------------------------------------------------------- plots


def plot_ttft(results: dict[str, Any], img_dir: str) -> list[str]:
    """One PNG per model: TTFT (log) against context length (log), one line per method, the lower bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    paths = []
    styles = {"lower_bound": dict(color="black", linestyle="--", linewidth=2.0, marker="", zorder=5)}
    dev = "GPU" if str(results["meta"]["system"].get("device", "cpu")).startswith("cuda") else "CPU"
    dtype = results["meta"]["config"].get("dtype", "")
    for model in _models(results):
        cases = sorted((c for c in results["cases"] if c["model"] == model), key=lambda c: c["context_tokens"])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in LABELS:
            pts = [(c["context_tokens"], c["methods"][m]["ttft"]["median"]) for c in cases
                   if m in c["methods"] and c["methods"][m]["ttft"].get("n")]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=LABELS[m], **styles.get(m, dict(marker="o", linewidth=1.5)))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens (preamble + documents)")
        ax.set_ylabel("time to first token (s, median)")
        ax.set_title(f"TTFT, {model} ({dev}, {dtype}, {results['meta']['config'].get('num_docs')} documents)")
        ax.grid(True, which="both", alpha=0.3)
        xs = sorted({c["context_tokens"] for c in cases})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(img_dir, f"perf_ttft_{_slug(model)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------- page


def render_markdown(results: dict[str, Any], images: list[str], docs_dir: str, command: str) -> str:
    info = results["meta"]["system"]
    cfg = results["meta"]["config"]
    imgs = "\n\n".join(f"![TTFT vs context length]({os.path.relpath(p, docs_dir)})" for p in images)
    note = f"\n\n{cfg['note']}" if cfg.get("note") else ""
    return f"""# Performance

Time to first token (TTFT), composition cost, decoding speed, store loading, FLOPs and memory of KV Packet against a
full prefill and the **query-only lower bound**: a prefill of only the query over a KV cache of the same length already
in memory. That bound is the physical limit of any cache-reuse method; KV Packet's TTFT is the composition of the
stored packets plus a query prefill, so its ratio to the bound is the price of composing.

Generated by one command (it measures, then writes this page, `docs/img/perf_results.json` and `docs/img/perf_*.png`):

```bash
{command}
```

On a quiet machine drop `--threads 1` (torch then uses every core; with other processes busy on the same cores, one
thread per process avoids OpenMP oversubscription, which made every method several times slower here). Re-render this
page from the saved results without measuring: `python -m hf_kvpacket.bench.report docs/img/perf_results.json --docs docs`.

- Device: {info['device_line']}
- Versions: torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, hf_kvpacket {info.get('hf_kvpacket', '?')}
- Run: {results['meta']['started']} – {results['meta'].get('finished', '?')}; {cfg['warmup']} warm-up + {cfg['reps']} timed repetitions per method ({cfg['full_reps']} for the full prefill), interleaved in a rotating order; medians. dtype {cfg['dtype']}, batch 1, {cfg['num_docs']} documents, {cfg['query_tokens']}-token query, {cfg['preamble_tokens']}-token preamble, packets wrapped by an {cfg['header_tokens']}+{cfg['trailer_tokens']}-slot adapter (untrained: timing does not depend on its values), random token ids.{capped_line(results)}
- {load_line(results)}{note}

## Summary

{key_findings(results)}

## TTFT

Median TTFT, and in brackets its ratio to the query-only lower bound measured in the same run.

{summary_table(results)}

{skipped_lines(results)}
{noise_lines(results)}

{imgs}

Where KV Packet's time goes (medians; `load` is a cold read of the packet files through `PacketStore`, page cache
dropped before every repetition):

{phases_table(results)}

The query prefill on a composed cache is cheaper than the lower bound's: a composed layer keeps free slots behind the
composed states (`_RESERVE_SLOTS`), so the query's keys and values are written in place, where a `DynamicCache`
concatenates, i.e. copies the whole layer. That saving pays for a good part of the composition.

## Composition

Composing writes every layer once into a preallocated buffer: keys are rotated straight from the packets into their
slots (`out = k·cos`, then each half adds the other half times `sin`; one cos/sin vector per packet, computed once per
call in float64), values are copied; no concatenate-then-copy, no clone, no dtype round trip. Sliding-window layers
only compose the slots their window keeps. On accelerators packets are copied in (non-blocking from pinned memory)
and each layer is rotated once in place with per-slot tables (few kernel launches). "Naive" is the first
implementation (concatenate, then rotate in place with a clone of the first half), measured in the same repetitions.
"Plain copy" copies the final cache's bytes once, into fresh memory (`clone`, what building any new cache costs) and
into preallocated, already touched memory (`copy_`, bandwidth alone); ratios use the faster of the two. The result is
bit-identical to the naive composition (tested).

{composition_table(results)}

At short contexts the per-packet, per-layer operator calls (a few microseconds each) weigh as much as the bytes.

## Decoding after composition

Greedy decoding steps after the query prefill, on the composed `PacketCache` and on a plain `DynamicCache` of the same
length (interleaved; tokens/s from the median time of the steps). Composed layers append in place (and grow by chunks
once the reserve is used), where a `DynamicCache` copies every layer at every step.

{decode_table(results)}

## Loading packets from disk

{store_table(results)}

## Batched throughput

`generate()` end to end (TTFT + decoding) for a batch whose rows each have their own packets, against the same batch
with a full prefill.

{throughput_table(results)}

## FLOPs (analytic, query time)

Per method, from cache preparation to the first token's logits (the formula of `hf_kvpacket.baselines.flops`: two FLOPs
per weight per token, attention `4·layers·heads·head_dim·context` per token, 3 FLOPs per re-rotated key element; packet
encoding is done once ahead of time and not counted).

{flops_table(results)}

## Memory

{memory_table(results)}

Composition allocates the final cache (plus its reserved free slots, where the query and the first decoded tokens go)
and cos/sin vectors, nothing else: no second copy of the KV exists at any time. On a CPU, reserved slots not written
yet are not resident, so they do not show in the peak; on a GPU they count (64 slots per layer: 1.5% of a 4K cache).

## Targets

The issue's targets, judged at its context lengths (4K and 8K tokens; the shorter ones above are for the plot, and
there the fixed per-operator cost of composing weighs more).

{targets_table(results)}

## Notes

- GPU: the benchmark picks CUDA when available (`--device auto`): times are wall-clock between synchronised marks,
  CUDA events give the device time of the same spans (`ttft_device` in the JSON), peak memory is
  `torch.cuda.max_memory_allocated`, and a `KV Packet (pinned host)` line composes packets from pinned host memory onto
  the device with non-blocking copies. The numbers above were not taken on a GPU unless the device line says so.
- Config-only shapes (random init, no download), e.g. `kvpacket bench --model llama-3.1-8b --num-layers 4`, measure
  larger architectures; `--num-layers` keeps them within a small machine's memory.
- On glibc, memory freed by one request is often handed back to the OS and faulted in again by the next (expensive in
  a VM); a serving process that composes many caches may prefer `MALLOC_TRIM_THRESHOLD_`/`MALLOC_MMAP_THRESHOLD_` or
  jemalloc. The numbers above use the default allocator.
"""


def write_docs(results: dict[str, Any], docs_dir: str, command: str) -> str:
    """Write `performance.md`, `img/perf_*.png` and `img/perf_results.json` under `docs_dir`; returns the page's path."""
    os.makedirs(docs_dir, exist_ok=True)
    os.makedirs(os.path.join(docs_dir, "img"), exist_ok=True)
    with open(os.path.join(docs_dir, "img", "perf_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    images = plot_ttft(results, os.path.join(docs_dir, "img"))
    page = os.path.join(docs_dir, "performance.md")
    with open(page, "w") as f:
        f.write(render_markdown(results, images, docs_dir, command))
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render docs/performance.md from saved benchmark results.")
    parser.add_argument("results")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args(argv)
    from .runner import derive

    with open(args.results) as f:
        results = derive(json.load(f))
    command = results["meta"].get("command", "kvpacket bench --suite docs --docs docs")
    print(write_docs(results, args.docs, command))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
