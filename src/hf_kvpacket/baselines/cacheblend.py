"""CacheBlend-style selective recompute: the document tokens whose KV deviates most are recomputed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import PacketCache
from .base import BaselineError, MethodContext, PromptParts, SelectiveRecompute, probe_deviation, top_fraction
from .flops import FlopCounter


@dataclass
class CacheBlend(SelectiveRecompute):
    """Recompute the `recompute_ratio` share of document tokens with the largest KV deviation ("HKVD" tokens).

    CacheBlend (Yao et al., EuroSys 2025, arXiv 2405.16444) composes independently computed chunk caches, runs every
    document token through the first layer(s) given the full context, and measures how far the fresh K/V of the
    check layer is from the stored one; the tokens that deviate most are recomputed, the others keep their stale KV.
    Here: the probe runs layers `0..check_layer-1` for all document tokens (their fresh K/V replace the stored ones
    there, as in CacheBlend) and compares the check layer's fresh and stored values (`deviation="value"`, CacheBlend's
    choice; layer 0 cannot discriminate: its values depend on the token alone). The selected tokens are then re-run
    through every layer in one forward. The one-step selection stands in for CacheBlend's gradual per-layer filtering.

    Parameters
    ----------
    recompute_ratio:
        Share of document tokens recomputed (default 0.15, CacheBlend's default; the paper's comparison uses 0.3).
        `1.0` recomputes everything (no probe) and equals the full recompute.
    check_layer:
        Layer whose K/V deviation selects the tokens (default 1, as in CacheBlend's reference code).
    deviation:
        ``"value"``, ``"key"`` or ``"both"``: which of the check layer's states are compared.

    Examples
    --------
    >>> CacheBlend(recompute_ratio=0.3).answer(ctx, {"documents": docs, "question": q}).recomputed_tokens
    """

    name = "cacheblend"

    display = "CacheBlend-15%"
    recompute_ratio: float = 0.15
    check_layer: int = 1
    deviation: str = "value"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.recompute_ratio) <= 1.0:
            raise BaselineError(f"CacheBlend recompute_ratio must be in [0, 1], got {self.recompute_ratio!r}.")
        if not isinstance(self.check_layer, int) or self.check_layer < 1:
            raise BaselineError(
                f"CacheBlend check_layer must be an integer >= 1 (layer 0's values depend on the token alone), got "
                f"{self.check_layer!r}."
            )
        if self.deviation not in ("value", "key", "both"):
            raise BaselineError(f"CacheBlend deviation must be 'value', 'key' or 'both', got {self.deviation!r}.")

    def select(self, ctx: MethodContext, parts: PromptParts, cache: PacketCache, counter: FlopCounter) -> torch.Tensor:
        start = len(parts.preamble)
        doc_slots = torch.arange(start, start + parts.num_document_tokens, device=ctx.device)
        count = top_fraction(doc_slots.numel(), float(self.recompute_ratio))
        if count == 0:
            return doc_slots[:0]
        if count == doc_slots.numel():
            return doc_slots
        if self.check_layer >= ctx.dims.num_layers:
            raise BaselineError(
                f"CacheBlend check_layer={self.check_layer} but the model has {ctx.dims.num_layers} layers."
            )
        deviation = probe_deviation(ctx, parts, cache, doc_slots, self.check_layer, self.deviation)
        # probe cost: every document token through layers 0..check_layer-1, plus the check layer's q/k/v projections
        counter.tokens((doc_slots + 1).tolist(), layers=self.check_layer)
        counter.projections(doc_slots.numel(), ctx.dims.qkv_params_per_layer)
        chosen = deviation.topk(count).indices
        return doc_slots.index_select(0, chosen).sort().values


__all__ = ["CacheBlend"]
