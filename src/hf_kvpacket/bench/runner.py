"""The benchmark itself: workloads, the methods compared, interleaved repetitions, results as a JSON-able dict.

One *case* is a (model, context length) pair: a preamble, `num_docs` documents and a query of random token ids (timing
does not depend on the text). Untimed set-up encodes the packets once (with an untrained `header|trailer` adapter of
the default size, so packets have their real length), writes them to a `PacketStore` and builds the query-only lower
bound's resident cache. Then every repetition runs every method once, in a rotating order (interleaved, so a burst of
load elsewhere hits all methods alike); the first `warmup` repetitions are discarded and medians are reported.

Methods (TTFT = from "the documents are wanted" to the first token's logits):

``full_prefill``     one causal prefill of preamble + documents + query (what no cache reuse costs).
``lower_bound``      query-only prefill over a `DynamicCache` of the composed length already in memory (a fresh copy
                     made before the clock starts): the physical limit of any cache-reuse method (nothing to load,
                     nothing to compose).
``kv_packet``        packets resident in memory: `PacketCache.from_packets` + query prefill.
``kv_packet_disk``   `PacketStore.get_many` from disk (page cache dropped first: a cold read) + compose + prefill.
``kv_packet_host``   (accelerators only) packets in pinned host memory, composed onto the device (non-blocking).
``cacheblend``       CacheBlend with 15% of document tokens recomputed (`hf_kvpacket.baselines`, when installed).
``epic``             EPIC, the first 16 tokens of every document recomputed (`hf_kvpacket.baselines`).

Beside the methods, each repetition times the composition alone (`compose`), the composition as first written
(`compose_naive`: concatenate, then rotate in place with a clone of the first half; kept here as the reference for
before/after), and one plain copy of the final cache's bytes, both into fresh memory (`plain_copy`, a `clone`: what any
new cache costs) and into preallocated, already touched memory (`plain_copy_warm`, `copy_`: bandwidth alone, no
allocation). The composition target is checked against the faster of the two.
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
from transformers import DynamicCache

from .. import baselines as bl
from ..adapter import PacketAdapter
from ..cache import PacketCache
from ..compat import cache_kwargs
from ..packet import Packet, encode_preamble
from ..model_structure import text_config
from ..rope import get_rerotator
from ..store import PacketStore
from .measure import Clock, LoadMonitor, PeakMemory, disk_read_bandwidth, drop_page_cache, summarize, system_info

#: Methods in table order. `kv_packet_host` only runs on accelerators; `cacheblend`/`epic` need `hf_kvpacket.baselines`.
METHODS = ("full_prefill", "lower_bound", "kv_packet", "kv_packet_disk", "kv_packet_host", *bl.RECOMPUTE_METHODS)
#: Composition-only measurements taken in the same repetitions.
COMPOSITION = ("plain_copy", "plain_copy_warm", "compose_naive", "compose")

from .models import SHAPES, load_model, resolve_device  # noqa: E402,F401  (model loading lives in models.py)


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


_text_config = text_config


from .workload import (  # noqa: E402,F401  (workloads and references live in workload.py)
    Workload,
    _Flops,
    _NoTemplate,
    clone_to_dynamic,
    compose_naive,
    fit_context,
    make_ids,
)


# ---------------------------------------------------------------------------------------------------------- a case


class Case:
    """One (model, context length) pair: set-up, one timed call per method, memory probes, decode comparison."""

    def __init__(self, model: nn.Module, tok: Any, cfg: BenchConfig, device: torch.device, context: int,
                 adapter: PacketAdapter | None, store_root: str, rng: random.Random):
        self.model, self.tok, self.cfg, self.device = model, tok, cfg, device
        self.clock = Clock(device)
        self.config = model.config
        text = _text_config(model)
        self.vocab = text.vocab_size
        self.adapter = adapter
        slots = (cfg.header_tokens + cfg.trailer_tokens) * cfg.num_docs if adapter is not None else 0
        extra = slots + cfg.query_tokens + cfg.decode_tokens + 1
        self.requested = context
        ctx = fit_context(context, cfg, getattr(text, "max_position_embeddings", None), extra)
        doc_len = (ctx - cfg.preamble_tokens) // cfg.num_docs
        self.w = Workload(make_ids(rng, self.vocab, cfg.preamble_tokens),
                          [make_ids(rng, self.vocab, doc_len) for _ in range(cfg.num_docs)],
                          make_ids(rng, self.vocab, cfg.query_tokens), ctx)
        self.rerotator = get_rerotator(model)
        self.flops = _Flops(model)
        w = self.w
        # packets come from a memory-only PacketStore, as a user's warm store serves them (the measured path is theirs)
        self.memory_store = PacketStore(None, model, tok, adapter, device=device, batch_size=cfg.num_docs)
        w.packets = self.memory_store.get_many(w.documents, progress=False)
        w.preamble_packet = encode_preamble(model, w.preamble) if w.preamble else None
        w.composed_slots = (w.preamble_packet.length if w.preamble_packet else 0) + sum(p.length for p in w.packets)
        self.full_ids = torch.tensor([w.preamble + [t for d in w.documents for t in d] + w.query], device=device)
        self.query_ids = torch.tensor([w.query], device=device)
        L, Q = w.composed_slots, len(w.query)
        self.query_kwargs = dict(input_ids=self.query_ids,
                                 attention_mask=torch.ones(1, L + Q, dtype=torch.long, device=device),
                                 position_ids=torch.arange(L, L + Q, device=device).unsqueeze(0))
        composed = self.compose()
        self.resident = clone_to_dynamic(composed, self.config)
        self.final_bytes = sum(t.numel() * t.element_size() for layer in composed.layers for t in (layer.keys, layer.values))
        self.allocated_bytes = sum(t.untyped_storage().nbytes() for layer in composed.layers for t in (layer.keys, layer.values))
        self.warm_copies = [(torch.zeros_like(layer.keys), torch.zeros_like(layer.values)) for layer in self.resident.layers]
        self.layer_bytes = max(layer.keys.numel() * layer.keys.element_size() * 2 for layer in composed.layers)
        del composed
        # the store: the packets written once (what a first `get_many` does), then only read back
        self.store = None
        if "kv_packet_disk" in cfg.methods:
            self.store = PacketStore(store_root, model, tok, adapter, max_memory_bytes=0, device=device,
                                     on_write_error="raise", on_corrupt="raise")
            self.store_files = []
            for ids, p in zip(w.documents, w.packets):
                path = self.store.path(self.store.key(ids))
                if not os.path.exists(path):
                    self.store.put(ids, p)
                self.store_files.append(path)
            self.store_file_bytes = sum(os.path.getsize(f) for f in self.store_files)
        # pinned host copies for accelerators
        self.host_packets = None
        if device.type != "cpu" and "kv_packet_host" in cfg.methods:
            self.host_packets = [p.to("cpu").pin_memory() for p in w.packets]
        # baselines
        self._baseline_flops: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self.baselines = None
        wanted = [m for m in bl.RECOMPUTE_METHODS if m in cfg.methods]
        if wanted:
            # token ids are given directly (PromptParts), so no prompt template is needed (nor a tokenizer)
            self.bctx = bl.MethodContext(model, tok, template=_NoTemplate())
            self.bparts = bl.PromptParts(w.preamble, w.documents, w.query)
            self.baselines = {}
            for name in wanted:
                method = bl.make_method(name)
                try:  # set-up, and one untimed call: a method that cannot run here (e.g. sliding windows) is skipped
                    method.prepare(self.bctx, self.bparts)
                    with torch.no_grad():
                        method.prefill(self.bctx, self.bparts)
                except bl.BaselineError as e:
                    self.skipped[name] = str(e)
                    continue
                self.baselines[name] = method

    # ------------------------------------------------------------------ pieces
    def compose(self, packets: list[Packet] | None = None) -> PacketCache:
        w = self.w
        return PacketCache.from_packets(packets if packets is not None else w.packets, model=self.model,
                                        preamble=w.preamble_packet)

    def _query_prefill(self, cache: PacketCache) -> torch.Tensor:
        out = self.model(**cache.inputs_for(self.w.query), logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def available(self) -> list[str]:
        cfg = self.cfg
        names = []
        for m in cfg.methods:
            if m == "kv_packet_host" and self.host_packets is None:
                continue
            if m in bl.RECOMPUTE_METHODS and (self.baselines is None or m not in self.baselines):
                continue
            if m == "kv_packet_disk" and self.store is None:
                continue
            names.append(m)
        return names

    # ------------------------------------------------------------------ one timed call
    def _device(self, t0: float, t1: float) -> dict[str, float]:
        """`{"ttft_device": s}`: the same span measured by CUDA events (empty on CPU)."""
        gpu = self.clock.gpu_seconds(t0, t1)
        return {} if gpu is None else {"ttft_device": gpu}

    @torch.no_grad()
    def run(self, name: str) -> dict[str, float]:
        """Run `name` once; returns `{"ttft": s, ...phases}` (wall-clock seconds between synchronised marks)."""
        c, w, model = self.clock, self.w, self.model
        if name == "full_prefill":
            t0 = c.mark()
            out = model(input_ids=self.full_ids, use_cache=True, logits_to_keep=1,
                        **cache_kwargs(DynamicCache(config=self.config)))
            out.logits[:, -1].argmax(-1)
            t1 = c.mark()
            return {"ttft": t1 - t0, **self._device(t0, t1)}
        if name == "lower_bound":
            resident = clone_to_dynamic(self.resident, self.config)  # untimed: the cache is already in memory
            t0 = c.mark()
            out = model(**self.query_kwargs, logits_to_keep=1, **cache_kwargs(resident))
            out.logits[:, -1].argmax(-1)
            t1 = c.mark()
            return {"ttft": t1 - t0, **self._device(t0, t1)}
        if name in ("kv_packet", "kv_packet_host"):
            t0 = c.mark()
            packets = self.host_packets if name == "kv_packet_host" else self.memory_store.get_many(w.documents,
                                                                                                      progress=False)
            cache = self.compose(packets)
            t1 = c.mark()
            self._query_prefill(cache)
            t2 = c.mark()
            return {"ttft": t2 - t0, "compose": t1 - t0, "prefill": t2 - t1, **self._device(t0, t2)}
        if name == "kv_packet_disk":
            drop_page_cache(self.store_files)
            t0 = c.mark()
            packets = self.store.get_many(w.documents, progress=False)
            t1 = c.mark()
            call = self.store.last_call
            if call.misses or call.encode_seconds:
                raise RuntimeError("A PacketStore hit re-encoded a document: the store is broken.")
            cache = self.compose(packets)
            t2 = c.mark()
            self._query_prefill(cache)
            t3 = c.mark()
            return {"ttft": t3 - t0, "load": t1 - t0, "compose": t2 - t1, "prefill": t3 - t2, **self._device(t0, t3)}
        if name in bl.RECOMPUTE_METHODS:
            method = self.baselines[name]
            t0 = c.mark()
            pre = method.prefill(self.bctx, self.bparts)
            out = model(**pre.inputs, logits_to_keep=1)
            out.logits[:, -1].argmax(-1)
            t1 = c.mark()
            self._baseline_flops[name] = pre.flops
            return {"ttft": t1 - t0, **self._device(t0, t1)}
        if name == "compose":
            t0 = c.mark()
            cache = self.compose()
            t1 = c.mark()
            del cache
            return {"ttft": t1 - t0}
        if name == "compose_naive":
            t0 = c.mark()
            layers = compose_naive(w.packets, w.preamble_packet, self.rerotator)
            t1 = c.mark()
            del layers
            return {"ttft": t1 - t0}
        if name == "plain_copy_warm":
            t0 = c.mark()
            for (dk, dv), layer in zip(self.warm_copies, self.resident.layers):
                dk.copy_(layer.keys)
                dv.copy_(layer.values)
            t1 = c.mark()
            return {"ttft": t1 - t0}
        if name == "plain_copy":
            t0 = c.mark()
            copies = [(layer.keys.clone(), layer.values.clone()) for layer in self.resident.layers]
            t1 = c.mark()
            del copies
            return {"ttft": t1 - t0}
        raise ValueError(f"unknown method {name!r}")

    def flops_of(self, name: str) -> float | None:
        w = self.w
        Q = len(w.query)
        pre_len = w.preamble_packet.length if w.preamble_packet else 0
        if name == "full_prefill":
            return self.flops.prefill(self.full_ids.shape[1])
        if name == "lower_bound":
            return self.flops.prefill(Q, past=w.composed_slots)
        if name.startswith("kv_packet"):
            return self.flops.prefill(Q, past=w.composed_slots, rerotated=w.composed_slots - pre_len)
        if name in bl.RECOMPUTE_METHODS:
            return self._baseline_flops.get(name)
        return None

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode_pair(self) -> dict[str, list[float]]:
        """Seconds for `decode_tokens` greedy steps after the query prefill: on a composed `PacketCache` and on a
        `DynamicCache` of the same length (a copy of the resident cache), interleaved."""
        n = self.cfg.decode_tokens
        model, c, w = self.model, self.clock, self.w
        L, Q = w.composed_slots, len(w.query)
        out: dict[str, list[float]] = {"kv_packet": [], "dynamic_cache": []}
        for rep in range(self.cfg.decode_reps + 1):
            for kind in (("kv_packet", "dynamic_cache") if rep % 2 == 0 else ("dynamic_cache", "kv_packet")):
                if kind == "kv_packet":
                    cache = self.compose()
                    kwargs = cache.inputs_for(w.query)
                else:
                    cache = clone_to_dynamic(self.resident, self.config)
                    kwargs = dict(self.query_kwargs, **cache_kwargs(cache))
                nxt = model(**kwargs, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
                t0 = c.mark()
                for i in range(n):
                    pos = L + Q + i
                    logits = model(input_ids=nxt, attention_mask=torch.ones(1, pos + 1, dtype=torch.long, device=self.device),
                                   position_ids=torch.tensor([[pos]], device=self.device), **cache_kwargs(cache)).logits
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                t1 = c.mark()
                if rep > 0:
                    out[kind].append(t1 - t0)
                del cache
        return out

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def peak_memory(self, name: str) -> tuple[int | None, str]:
        with PeakMemory(self.device) as pm:
            self.run(name)
        return pm.peak, pm.method


from .batches import batch_throughput  # noqa: E402  (batched generate throughput lives in batches.py)


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
        "full_prefill_tokens": int(case.full_ids.shape[1]), "cache_bytes": case.final_bytes,
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
        for name in methods + ["compose", "compose_naive"]:
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


from .targets import TARGET_MIN_CONTEXT, derive, evaluate_targets  # noqa: E402,F401  (derived figures: targets.py)
