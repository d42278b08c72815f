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
from ..packet import Packet, encode_packets, encode_preamble
from ..model_structure import text_config
from ..rope import get_rerotator
from ..store import PacketStore
from .measure import Clock, LoadMonitor, PeakMemory, disk_read_bandwidth, drop_page_cache, summarize, system_info

#: Methods in table order. `kv_packet_host` only runs on accelerators; `cacheblend`/`epic` need `hf_kvpacket.baselines`.
METHODS = ("full_prefill", "lower_bound", "kv_packet", "kv_packet_disk", "kv_packet_host", *bl.RECOMPUTE_METHODS)
#: Composition-only measurements taken in the same repetitions.
COMPOSITION = ("plain_copy", "plain_copy_warm", "compose_naive", "compose")

#: Config-only model shapes (random init, no download). `--num-layers` shrinks a shape to fit a small machine.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.1-8b": ("LlamaForCausalLM", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "llama-3.2-1b": ("LlamaForCausalLM", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "qwen2.5-7b": ("Qwen2ForCausalLM", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "tiny-llama": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=4096)),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(name: str, cfg: BenchConfig, device: torch.device) -> tuple[nn.Module, Any, str]:
    """A real model (offline registry name, folder or Hub id) or, with `config_only`, a random-init shape."""
    dtype = DTYPES[cfg.dtype]
    if cfg.config_only or name in SHAPES:
        import transformers

        if name not in SHAPES:
            raise ValueError(f"Unknown config-only shape {name!r}; known: {', '.join(SHAPES)}.")
        cls_name, kwargs = SHAPES[name]
        kwargs = dict(kwargs)
        if cfg.num_layers:
            kwargs["num_hidden_layers"] = cfg.num_layers
        cls = getattr(transformers, cls_name)
        config = cls.config_class(**kwargs, attn_implementation="sdpa")
        torch.manual_seed(cfg.seed)
        with torch.device(device):  # initialised in place, in the target dtype (an 8B shape never exists in fp32)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        model = model.eval()
        label = f"{name} (random init, {config.num_hidden_layers} layers)"
        return model, None, label
    from ..offline_models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name, dtype=dtype)
    model = model.to(device).eval()
    if cfg.num_layers:
        raise ValueError("--num-layers applies to config-only shapes only.")
    return model, tok, name


_text_config = text_config


@dataclass
class Workload:
    """Token ids of one case and the packets/caches built from them (untimed set-up)."""

    preamble: list[int]
    documents: list[list[int]]
    query: list[int]
    context_tokens: int  # preamble + documents
    packets: list[Packet] = field(default_factory=list)
    preamble_packet: Packet | None = None
    composed_slots: int = 0


def make_ids(rng: random.Random, vocab: int, n: int) -> list[int]:
    low = 1 if vocab < 2000 else 1000
    high = max(low + 1, int(vocab * 0.9))
    return [rng.randrange(low, high) for _ in range(n)]


def fit_context(requested: int, cfg: BenchConfig, max_pos: int | None, extra: int) -> int:
    """The context length actually used: `requested`, capped so that context + packet slots + query + decoded tokens
    fit the model's `max_position_embeddings`, rounded down so documents have equal lengths."""
    ctx = requested
    if max_pos is not None and ctx + extra > max_pos:
        ctx = max_pos - extra
    docs = max(1, (ctx - cfg.preamble_tokens) // cfg.num_docs)
    return cfg.preamble_tokens + docs * cfg.num_docs


def clone_to_dynamic(cache: Any, config: Any) -> DynamicCache:
    """A plain `DynamicCache` holding a copy of every layer of `cache` (the lower bound's resident cache)."""
    out = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.clone(), layer.values.clone(), i)
        if hasattr(layer, "cumulative_length"):  # sliding-window layers hold only their window
            out.layers[i].cumulative_length = layer.cumulative_length
    return out


def compose_naive(packets: list[Packet], preamble: Packet | None, rerotator: Any) -> list[tuple[torch.Tensor, ...]]:
    """The first composition of this library (single row), kept as the before/after reference: per layer, `torch.cat`
    the packets, then rotate the keys in place with per-slot tables (`rotate_keys_`, which clones the first half)."""
    from ..rope import rotate_keys_, rotation_tables

    items = ([preamble] if preamble is not None else []) + list(packets)
    lengths = [p.length for p in items]
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    deltas = torch.repeat_interleave(offsets, torch.tensor(lengths))
    tables: dict = {}
    out = []
    for layer_idx in range(items[0].num_layers):
        keys = torch.cat([p.keys[layer_idx] for p in items], dim=-2).unsqueeze(0)
        values = torch.cat([p.values[layer_idx] for p in items], dim=-2).unsqueeze(0)
        spec = rerotator.specs[layer_idx]
        key = (id(spec.inv_freq), keys.dtype, keys.device)
        if key not in tables:
            tables[key] = rotation_tables(deltas, spec.inv_freq, keys.dtype, keys.device)
        rotate_keys_(keys, *tables[key])
        out.append((keys, values))
    return out


class _Flops:
    """Analytic FLOPs of a prefill: the one formula of `hf_kvpacket.baselines.flops`."""

    def __init__(self, model: nn.Module):
        self.dims = bl.ModelDims.from_model(model)

    def prefill(self, n: int, past: int = 0, rerotated: int = 0) -> float:
        counter = bl.FlopCounter(self.dims)
        if rerotated:
            counter.rerotation(rerotated)
        counter.prefill(n, past=past, logits=1)
        return counter.total


class _NoTemplate:
    """Stands in for a prompt template when the ids are given directly (config-only models have no tokenizer)."""


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
        w.packets = encode_packets(model, w.documents, adapter, batch_size=cfg.num_docs, progress=False)
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
            cache = self.compose(self.host_packets if name == "kv_packet_host" else None)
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


# ---------------------------------------------------------------------------------------------------------- batches


@torch.no_grad()
def batch_throughput(model: nn.Module, tok: Any, cfg: BenchConfig, device: torch.device, adapter: PacketAdapter | None,
                     rng: random.Random, log: Callable[[str], None]) -> dict[str, Any]:
    """Tokens/s of `generate()` for a batch whose rows each have their own packets, against the same batch with a
    full prefill (TTFT and decoding included: end-to-end throughput)."""
    text = _text_config(model)
    vocab = text.vocab_size
    B, N = cfg.batch_size, cfg.batch_new_tokens
    slots = (cfg.header_tokens + cfg.trailer_tokens) * cfg.num_docs if adapter is not None else 0
    ctx = fit_context(cfg.batch_context, cfg, getattr(text, "max_position_embeddings", None), slots + cfg.query_tokens + N)
    doc_len = (ctx - cfg.preamble_tokens) // cfg.num_docs
    preamble = make_ids(rng, vocab, cfg.preamble_tokens)
    rows = [[make_ids(rng, vocab, doc_len) for _ in range(cfg.num_docs)] for _ in range(B)]
    queries = [make_ids(rng, vocab, cfg.query_tokens) for _ in range(B)]
    log(f"batch: encoding {B} x {cfg.num_docs} packets ({ctx} context tokens per row)")
    packets = encode_packets(model, [d for row in rows for d in row], adapter, batch_size=cfg.num_docs, progress=False)
    per_row = [packets[r * cfg.num_docs:(r + 1) * cfg.num_docs] for r in range(B)]
    pre = encode_preamble(model, preamble) if preamble else None
    full = torch.tensor([preamble + [t for d in row for t in d] + q for row, q in zip(rows, queries)], device=device)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    pad = 0 if pad is None else pad
    gen = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=pad)
    clock = Clock(device)
    times: dict[str, list[float]] = {"kv_packet": [], "full_prefill": []}
    for rep in range(cfg.batch_reps + 1):
        for kind in (("kv_packet", "full_prefill") if rep % 2 == 0 else ("full_prefill", "kv_packet")):
            t0 = clock.mark()
            if kind == "kv_packet":
                cache = PacketCache.from_packets(per_row, model=model, preamble=pre)
                out = model.generate(**cache.inputs_for(queries), **gen)
                del cache
            else:
                out = model.generate(input_ids=full, attention_mask=torch.ones_like(full), **gen)
            t1 = clock.mark()
            new = out.shape[1] - (len(queries[0]) if kind == "kv_packet" else full.shape[1])
            if new != N:
                raise RuntimeError(f"generate() produced {new} tokens instead of {N}")
            if rep > 0:
                times[kind].append(t1 - t0)
            log(f"batch rep {rep}/{cfg.batch_reps} {kind}: {t1 - t0:.3f}s" + (" (warm-up)" if rep == 0 else ""))
    res = {k: summarize(v) for k, v in times.items()}
    return {"batch_size": B, "context_tokens": ctx, "new_tokens": N, "documents_per_row": cfg.num_docs,
            "seconds": res,
            "tokens_per_s": {k: B * N / v["median"] for k, v in res.items()},
            "speedup": res["full_prefill"]["median"] / res["kv_packet"]["median"]}


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
        comp["naive_over_plain_copy"] = comp["compose_naive"]["median"] / plain
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
