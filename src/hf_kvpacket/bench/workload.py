"""Benchmark workloads: random token ids sized to a context, the lower bound's resident cache, and the analytic FLOPs
of a prefill."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import DynamicCache

from .. import baselines as bl
from ..packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from .runner import BenchConfig

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


def fit_context(requested: int, cfg: "BenchConfig", max_pos: int | None, extra: int) -> int:
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
