"""Selective recompute on a composed cache: the machinery of CacheBlend and EPIC.

Plain packets are composed, then the K/V of chosen document slots are recomputed in every layer (`ScatterCache`
writes them in place), then the query runs. `SelectiveRecompute` subclasses choose the slots (`select`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..cache import PacketCache
from ..compat import cache_kwargs
from ..model_structure import decoder
from .base import BaselineError, MethodContext, PromptParts, StitchedPackets
from .flops import FlopCounter

class ScatterCache(Cache):
    """A view of a composed cache whose `update` writes fresh K/V into chosen slots and returns the whole layer.

    One forward over the chosen tokens (their ids at their true positions, with a mask letting each attend to every
    slot at or before it) then recomputes exactly those tokens' KV in every layer, given the (partly stale) rest of
    the context: the stale entries of those slots are replaced layer by layer, before that layer's attention.

    With `probe_layer=l`, the forward stops when it reaches layer `l` (raising :class:`ProbeStop`), after recording
    the per-slot distance between the fresh and the stored K/V of that layer in :attr:`deviation` (CacheBlend's
    selection signal). Layers before `l` keep the fresh K/V.

    Parameters
    ----------
    target:
        The composed cache (full-attention dynamic layers; its layer objects are shared, not copied).
    slots:
        Sorted slot indices, shape `(n,)`, one per token of the forward.
    probe_layer:
        Stop at this layer and measure deviations (`None`: run every layer).
    deviation:
        ``"value"`` (CacheBlend's choice), ``"key"`` or ``"both"``: what the probe compares.
    """

    def __init__(self, target: Cache, slots: torch.Tensor, probe_layer: int | None = None, deviation: str = "value"):
        for layer in target.layers:
            if not isinstance(layer, DynamicLayer) or isinstance(layer, DynamicSlidingWindowLayer):
                raise BaselineError(
                    f"Selective recompute needs full-attention cache layers, found {type(layer).__name__} (a "
                    "sliding-window model). CacheBlend/EPIC baselines support full-attention models only."
                )
        super().__init__(layers=list(target.layers))
        self.slots = slots
        self.probe_layer = probe_layer
        self.deviation_kind = deviation
        self.deviation: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        if layer_idx == self.probe_layer:
            old_k = layer.keys.index_select(-2, self.slots)
            old_v = layer.values.index_select(-2, self.slots)
            dev = torch.zeros(self.slots.numel(), dtype=torch.float32, device=key_states.device)
            if self.deviation_kind in ("value", "both"):
                dev += (value_states.float() - old_v.float()).pow(2).sum(dim=(0, 1, 3))
            if self.deviation_kind in ("key", "both"):
                dev += (key_states.float() - old_k.float()).pow(2).sum(dim=(0, 1, 3))
            self.deviation = dev
            raise ProbeStop
        layer.keys.index_copy_(-2, self.slots, key_states.to(layer.keys.dtype))
        layer.values.index_copy_(-2, self.slots, value_states.to(layer.values.dtype))
        return layer.keys, layer.values


class ProbeStop(Exception):
    """Raised by :class:`ScatterCache` to end a probe forward at its probe layer (caught by the caller)."""


def slot_mask(slots: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask `(1, 1, n, length)`: token `i` (at slot `slots[i]`) sees every slot `<= slots[i]`.

    Examples
    --------
    >>> slot_mask(torch.tensor([1, 3]), 4, torch.float32)[0, 0].eq(0).int().tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    allowed = torch.arange(length, device=slots.device)[None, :] <= slots[:, None]
    mask = torch.zeros(1, 1, slots.numel(), length, dtype=dtype, device=slots.device)
    return mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)


_decoder = decoder  # the base decoder (no LM head): the recompute forwards need K/V, not logits


@dataclass
class SelectiveRecompute(StitchedPackets):
    """Plain packets composed, then the KV of selected document tokens recomputed in every layer, then the query.

    Subclasses choose the tokens in :meth:`select` (CacheBlend: largest KV deviation; EPIC: first tokens of each
    packet). Selecting every document token reproduces the full recompute.
    """

    def select(self, ctx: MethodContext, parts: PromptParts, cache: PacketCache, counter: FlopCounter) -> torch.Tensor:
        """Sorted slot indices (positions in the composed cache) of the document tokens to recompute."""
        raise NotImplementedError

    @staticmethod
    def document_spans(parts: PromptParts) -> list[tuple[int, int]]:
        """`(start, end)` slots of each document in the composed cache (plain packets: no header/trailer)."""
        spans, start = [], len(parts.preamble)
        for d in parts.documents:
            spans.append((start, start + len(d)))
            start += len(d)
        return spans

    def recompute(self, ctx: MethodContext, parts: PromptParts, cache: PacketCache, counter: FlopCounter) -> int:
        if not parts.documents:
            return 0
        slots = self.select(ctx, parts, cache, counter)
        if slots.numel() == 0:
            return 0
        run_selected(ctx, parts, cache, slots)
        counter.tokens((slots + 1).tolist())
        return int(slots.numel())


def _forward_slots(ctx: MethodContext, parts: PromptParts, cache: PacketCache, scatter: ScatterCache) -> None:
    slots = scatter.slots
    ids = torch.tensor(parts.context_ids, dtype=torch.long, device=ctx.device).index_select(0, slots)
    dtype = ctx.model.get_input_embeddings().weight.dtype
    mask = slot_mask(slots, cache.composed_length, dtype)
    _decoder(ctx.model)(input_ids=ids[None], position_ids=slots[None], attention_mask=mask, use_cache=True,
                        **cache_kwargs(scatter))


def run_selected(ctx: MethodContext, parts: PromptParts, cache: PacketCache, slots: torch.Tensor) -> None:
    """Recompute the K/V of the tokens at `slots` in every layer, in place in `cache` (one forward)."""
    slots = slots.to(ctx.device)
    _forward_slots(ctx, parts, cache, ScatterCache(cache, slots))


def probe_deviation(ctx: MethodContext, parts: PromptParts, cache: PacketCache, slots: torch.Tensor,
                    layer: int, deviation: str = "value") -> torch.Tensor:
    """Run the tokens at `slots` through layers `0..layer-1` (writing fresh K/V there) and return, per slot, the
    squared distance between the fresh and the stored K/V of layer `layer`."""
    slots = slots.to(ctx.device)
    scatter = ScatterCache(cache, slots, probe_layer=layer, deviation=deviation)
    try:
        _forward_slots(ctx, parts, cache, scatter)
    except ProbeStop:
        pass
    if scatter.deviation is None:
        raise BaselineError(f"The probe never reached layer {layer} (the model has {len(cache.layers)} layers).")
    return scatter.deviation


def top_fraction(count: int, ratio: float) -> int:
    """How many of `count` tokens a ratio selects: `ceil(ratio * count)`, clipped to `[0, count]`.

    Examples
    --------
    >>> top_fraction(100, 0.15), top_fraction(7, 0.15), top_fraction(7, 1.0), top_fraction(7, 0.0)
    (15, 2, 7, 0)
    """
    return max(0, min(count, math.ceil(ratio * count - 1e-9)))


__all__ = ["SelectiveRecompute", "ScatterCache", "ProbeStop", "slot_mask", "run_selected", "probe_deviation",
           "top_fraction"]
