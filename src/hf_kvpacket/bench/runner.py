"""The benchmark driver: its configuration, the cases it runs, interleaved repetitions, results as a JSON-able dict.

One *case* is a (model, context length) pair (`case.py`); the lines it times, the methods that answer (through
`hf_kvpacket.baselines`) and the bench-only measurements, are the table of `methods.py`. Every repetition runs every
line once, in a rotating order (interleaved, so a burst of load elsewhere hits all lines alike); the first `warmup`
repetitions are discarded and medians are reported. TTFT is from "the documents are wanted" to the first token's
logits; the KV Packet lines also report their phases (`load` from disk, `compose`, the query `prefill`).

Beside the methods, each repetition times the composition alone (`compose`) and one plain copy of the final cache's
bytes, both into fresh memory (`plain_copy`, a `clone`: what any new cache costs) and into preallocated, already
touched memory (`plain_copy_warm`, `copy_`: bandwidth alone, no allocation). The composition target is checked
against the faster of the two.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..adapter import PacketAdapter
from ..rope import get_rerotator
from .batches import batch_throughput
from .case import Case
from .measure import LoadMonitor, disk_read_bandwidth, summarize, system_info
from .methods import COMPOSITION, METHODS
from .models import SHAPES, load_model, resolve_device  # noqa: F401  (SHAPES: re-exported)
from .targets import TARGET_MIN_CONTEXT, derive, evaluate_targets  # noqa: F401  (derived figures: targets.py)
from .workload import Workload, _Flops, _NoTemplate, clone_to_dynamic, fit_context, make_ids  # noqa: F401  (re-exported)


@dataclass
class BenchConfig:
    """Knobs of one benchmark run (the CLI maps its flags onto these; see `kvpacket bench --help`)."""

    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    config_only: bool = False
    num_layers: int | None = None
    contexts: list[int] = field(default_factory=lambda: [4096])
    num_docs: int = 8
    query_tokens: int = 32
    preamble_tokens: int = 16
    header_tokens: int = 8
    trailer_tokens: int = 8
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    reps: int = 7
    full_reps: int = 3
    warmup: int = 1
    decode_tokens: int = 32
    decode_reps: int = 3
    batch_size: int = 4
    batch_context: int = 1024
    batch_new_tokens: int = 16
    batch_reps: int = 2
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    store_dir: str | None = None
    memory: bool = True
    seed: int = 0
    progress: bool = True
    note: str = ""


# ---------------------------------------------------------------------------------------------------------- helpers


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- driver


def run_benchmark(cfg: BenchConfig, models: dict[str, tuple[nn.Module, Any]] | None = None) -> dict[str, Any]:
    """Run the benchmark described by `cfg`; returns the results (JSON-able).

    `models` may supply already-loaded `(model, tokenizer)` pairs by name (tests, notebooks); other names in
    `cfg.models` are loaded (`offline_models.load_model_and_tokenizer`, or a config-only shape).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    monitor = LoadMonitor()
    info = system_info(device)
    log = lambda msg: _log(cfg, msg)  # noqa: E731
    log(info["device_line"])
    root = cfg.store_dir or tempfile.mkdtemp(prefix="kvpacket-bench-")
    own_root = cfg.store_dir is None
    results: dict[str, Any] = {"meta": {"system": info, "config": asdict(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                               "cases": [], "throughput": [], "disk": None}
    rng = random.Random(cfg.seed)
    try:
        for name in cfg.models:
            if models and name in models:
                model, tok = models[name]
                label = name
            else:
                log(f"loading {name}")
                model, tok, label = load_model(name, cfg, device)
            model.eval()
            adapter = None
            if cfg.header_tokens + cfg.trailer_tokens > 0:
                adapter = PacketAdapter.for_model(model, cfg.header_tokens, cfg.trailer_tokens, seed=cfg.seed)
            get_rerotator(model)
            for context in cfg.contexts:
                log(f"{label}: set-up for {context} context tokens ({cfg.num_docs} documents)")
                case = Case(model, tok, cfg, device, context, adapter, os.path.join(root, "store"), rng)
                results["cases"].append(_run_case(case, label, cfg, log))
                if results["disk"] is None and case.store is not None:
                    log("measuring the disk's sequential read bandwidth")
                    results["disk"] = disk_read_bandwidth(root, max(case.store_file_bytes, 64 << 20))
                del case
            if cfg.batch_size > 1 and cfg.batch_new_tokens > 0:
                log(f"{label}: batched throughput, {cfg.batch_size} rows with their own packets")
                tp = batch_throughput(model, tok, cfg, device, adapter, rng, log)
                tp["model"] = label
                results["throughput"].append(tp)
            del model
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["meta"]["load"] = monitor.summary()
    return derive(results)


def _run_case(case: Case, label: str, cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    w = case.w
    methods = case.available()
    items = methods + list(COMPOSITION)
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in items}
    total = cfg.warmup + cfg.reps
    for rep in range(total):
        order = items[rep % len(items):] + items[:rep % len(items)]  # rotate: no method always runs first
        line = []
        for name in order:
            if name == "full_prefill" and rep >= cfg.warmup + cfg.full_reps:
                continue
            phases = case.run(name)
            case.clock.forget()
            if rep >= cfg.warmup:
                for k, v in phases.items():
                    samples[name].setdefault(k, []).append(v)
            line.append(f"{name} {phases['ttft']:.3f}s")
        log(f"{label} ctx={w.context_tokens} rep {rep + 1}/{total}{' (warm-up)' if rep < cfg.warmup else ''}: "
            + ", ".join(line))
    out: dict[str, Any] = {
        "model": label, "context_requested": case.requested, "context_tokens": w.context_tokens,
        "documents": cfg.num_docs, "document_tokens": len(w.documents[0]), "query_tokens": len(w.query),
        "preamble_tokens": len(w.preamble), "composed_slots": w.composed_slots,
        "full_prefill_tokens": case.full_tokens, "cache_bytes": case.final_bytes,
        "reserved_bytes": case.allocated_bytes - case.final_bytes,
        "layer_bytes": case.layer_bytes, "methods": {}, "composition": {}, "skipped": dict(case.skipped),
    }
    for name in methods:
        entry = {"ttft": summarize(samples[name].get("ttft", [])), "flops": case.flops_of(name)}
        for phase in ("compose", "load", "prefill", "ttft_device"):
            if phase in samples[name]:
                entry[phase] = summarize(samples[name][phase])
        out["methods"][name] = entry
    for name in COMPOSITION:
        out["composition"][name] = summarize(samples[name]["ttft"])
    # memory
    if cfg.memory:
        log(f"{label} ctx={w.context_tokens}: peak memory")
        mem: dict[str, Any] = {}
        for name in methods + ["compose"]:
            peak, how = case.peak_memory(name)
            mem[name] = peak
            mem["method"] = how
        out["memory"] = mem
    # decode
    if cfg.decode_tokens > 0 and cfg.decode_reps > 0:
        log(f"{label} ctx={w.context_tokens}: decode {cfg.decode_tokens} tokens, PacketCache vs DynamicCache")
        d = case.decode_pair()
        ds = {k: summarize(v) for k, v in d.items()}
        out["decode"] = {"tokens": cfg.decode_tokens, "seconds": ds}
    # store
    if "kv_packet_disk" in out["methods"]:
        out["store"] = {"file_bytes": case.store_file_bytes, "reencoded": False}
    return out

