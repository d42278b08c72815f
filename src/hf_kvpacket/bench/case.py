"""One benchmark case, a (model, context length) pair: untimed set-up, one timed call per line, memory probes and the
decode comparison.

The set-up draws a preamble, `num_docs` documents and a query of random token ids (timing does not depend on the
text), encodes the packets once through a memory-only `PacketStore`, writes them to an on-disk store for the "from
disk" line, and builds the lower bound's resident cache. The lines that answer run through `hf_kvpacket.baselines`
(one :class:`~hf_kvpacket.baselines.MethodContext` per packet source); the case only times them.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import baselines as bl
from ..adapter import PacketAdapter
from ..cache import PacketCache
from ..compat import cache_kwargs
from ..model_structure import text_config
from ..packet import Packet
from ..store import PacketStore
from .measure import Clock, PeakMemory, drop_page_cache
from .methods import LINES, BenchMethod, Measurement, measurement
from .workload import Workload, _Flops, _NoTemplate, clone_to_dynamic, fit_context, make_ids

if TYPE_CHECKING:  # pragma: no cover
    from .runner import BenchConfig


class Case:
    """One (model, context length) pair: set-up, one timed call per line, memory probes, decode comparison."""

    def __init__(self, model: nn.Module, tok: Any, cfg: "BenchConfig", device: torch.device, context: int,
                 adapter: PacketAdapter | None, store_root: str, rng: random.Random):
        self.model, self.tok, self.cfg, self.device = model, tok, cfg, device
        self.clock = Clock(device)
        self.config = model.config
        text = text_config(model)
        self.vocab = text.vocab_size
        self.adapter = adapter
        slots = (cfg.header_tokens + cfg.trailer_tokens) * cfg.num_docs if adapter is not None else 0
        extra = slots + cfg.query_tokens + cfg.decode_tokens + 1
        self.requested = context
        ctx = fit_context(context, cfg, getattr(text, "max_position_embeddings", None), extra)
        doc_len = (ctx - cfg.preamble_tokens) // cfg.num_docs
        self.w = w = Workload(make_ids(rng, self.vocab, cfg.preamble_tokens),
                              [make_ids(rng, self.vocab, doc_len) for _ in range(cfg.num_docs)],
                              make_ids(rng, self.vocab, cfg.query_tokens), ctx)
        self.parts = bl.PromptParts(w.preamble, w.documents, w.query)
        self.full_tokens = len(self.parts.context_ids) + len(w.query)
        self.flops = _Flops(model)
        # packets come from a memory-only PacketStore, as a user's warm store serves them (the measured path is theirs);
        # token ids are given directly (PromptParts), so no prompt template is needed (nor a tokenizer)
        memory = bl.MethodContext(model, tok, template=_NoTemplate(), adapter=adapter)
        self.memory_store = memory.use_store(PacketStore(None, model, tok, adapter, device=device,
                                                         batch_size=cfg.num_docs))
        w.packets = self.memory_store.get_many(w.documents, progress=False)
        w.preamble_packet = memory.preamble_packet(w.preamble)
        w.composed_slots = (w.preamble_packet.length if w.preamble_packet else 0) + sum(p.length for p in w.packets)
        L, Q = w.composed_slots, len(w.query)
        self.query_kwargs = dict(input_ids=torch.tensor([w.query], device=device),
                                 attention_mask=torch.ones(1, L + Q, dtype=torch.long, device=device),
                                 position_ids=torch.arange(L, L + Q, device=device).unsqueeze(0))
        composed = self.compose()
        self.resident = clone_to_dynamic(composed, self.config)
        self.final_bytes = sum(t.numel() * t.element_size() for layer in composed.layers for t in (layer.keys, layer.values))
        self.allocated_bytes = sum(t.untyped_storage().nbytes() for layer in composed.layers for t in (layer.keys, layer.values))
        self.warm_copies = [(torch.zeros_like(layer.keys), torch.zeros_like(layer.values)) for layer in self.resident.layers]
        self.layer_bytes = max(layer.keys.numel() * layer.keys.element_size() * 2 for layer in composed.layers)
        del composed
        self.contexts: dict[str, bl.MethodContext] = {"memory": memory}
        # the store on disk: the packets written once (what a first `get_many` does), then only read back, cold
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
            disk = bl.MethodContext(model, tok, template=_NoTemplate(), adapter=adapter, timed_loads=True,
                                    clock=self.clock.mark)  # the clock marks the end of the load
            disk.use_store(self.store)
            self.contexts["disk"] = disk
        # pinned host copies for accelerators
        if device.type != "cpu" and "kv_packet_host" in cfg.methods:
            host = bl.MethodContext(model, tok, template=_NoTemplate(), adapter=adapter)
            host_store = host.use_store(PacketStore(None, model, tok, adapter, device="cpu"))
            for ids, p in zip(w.documents, w.packets):
                host_store.put(ids, p.to("cpu").pin_memory())
            self.contexts["host"] = host
        # the lines that answer: set up, and one untimed call each (a method that cannot run here is skipped)
        self.methods: dict[str, tuple[BenchMethod, bl.BaselineMethod, bl.MethodContext]] = {}
        self.skipped: dict[str, str] = {}
        self._flops: dict[str, float] = {}
        for name in cfg.methods:
            line = LINES.get(name)
            ctx = self.contexts.get(line.source or "memory") if isinstance(line, BenchMethod) else None
            if ctx is None:  # a bench-only measurement, or a source this device lacks (pinned host memory on a CPU)
                continue
            method = line.make(adapter)
            try:
                method.prepare(ctx, self.parts)
                with torch.no_grad():
                    method.prefill(ctx, self.parts)
            except bl.BaselineError as e:  # e.g. selective recompute on sliding-window layers
                self.skipped[name] = str(e)
                continue
            self.methods[name] = (line, method, ctx)

    # ------------------------------------------------------------------ pieces
    def compose(self, packets: list[Packet] | None = None) -> PacketCache:
        w = self.w
        return PacketCache.from_packets(packets if packets is not None else w.packets, model=self.model,
                                        preamble=w.preamble_packet)

    def available(self) -> list[str]:
        """The configured lines that run here, in the configured order."""
        return [m for m in self.cfg.methods if m in self.methods or isinstance(LINES.get(m), Measurement)]

    def device_time(self, t0: float, t1: float) -> dict[str, float]:
        """`{"ttft_device": s}`: the same span measured by CUDA events (empty on CPU)."""
        gpu = self.clock.gpu_seconds(t0, t1)
        return {} if gpu is None else {"ttft_device": gpu}

    # ------------------------------------------------------------------ one timed call
    @torch.no_grad()
    def run(self, name: str) -> dict[str, float]:
        """Run `name` once; returns `{"ttft": s, ...phases}` (wall-clock seconds between synchronised marks)."""
        if name not in self.methods:
            return measurement(name).run(self)
        line, method, ctx = self.methods[name]
        c = self.clock
        if line.source == "disk":
            drop_page_cache(self.store_files)
        ctx.marks.clear()
        t0 = c.mark()
        pre = method.prefill(ctx, self.parts)  # packet lookup, composition, recompute: the method's own
        t1 = c.mark()
        self.model(**pre.inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
        t2 = c.mark()
        self._flops[name] = pre.flops
        phases = {"ttft": t2 - t0}
        if line.source is not None:
            loaded = ctx.marks.get("load")  # marked only where the context has a clock (the store on disk)
            if loaded is not None:
                phases["load"] = loaded - t0
            phases["compose"] = t1 - (loaded if loaded is not None else t0)
            phases["prefill"] = t2 - t1
        return {**phases, **self.device_time(t0, t2)}

    def flops_of(self, name: str) -> float | None:
        """Analytic FLOPs of a line: what its prefill counted (lines that answer), or the measurement's formula."""
        if name in self.methods:
            return self._flops.get(name)
        line = LINES.get(name)
        return line.flops(self) if line is not None and line.flops is not None else None

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


__all__ = ["Case"]
