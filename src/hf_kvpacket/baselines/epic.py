"""EPIC-style selective recompute: the first tokens of every packet are recomputed in place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import PacketCache
from .base import BaselineError, MethodContext, PromptParts, SelectiveRecompute
from .flops import FlopCounter


@dataclass
class EPIC(SelectiveRecompute):
    """Recompute the KV of the first `num_tokens` tokens of each plain packet ("LegoLink"), keep the rest stale.

    EPIC (Hu et al., 2024, arXiv 2410.15332) observes that the damage of independently encoded chunks concentrates on
    each chunk's first tokens, which act as attention sinks; recomputing a few of them given the preceding context
    recovers much of the quality at a fixed cost per chunk. Here those tokens are re-run through every layer in one
    forward at their true positions, attending to everything before them (preamble, earlier packets, and the
    already-fresh tokens of the same step).

    Parameters
    ----------
    num_tokens:
        Tokens recomputed at the start of each packet (default 16). `num_tokens >= ` the longest packet recomputes
        everything and equals the full recompute.

    Examples
    --------
    >>> EPIC(num_tokens=32).answer(ctx, {"documents": docs, "question": q}).recomputed_tokens
    """

    name = "epic"

    display = "EPIC (16 tokens)"
    num_tokens: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise BaselineError(f"EPIC num_tokens must be an integer >= 0, got {self.num_tokens!r}.")

    def select(self, ctx: MethodContext, parts: PromptParts, cache: PacketCache, counter: FlopCounter) -> torch.Tensor:
        slots = [s for start, end in self.document_spans(parts) for s in range(start, min(end, start + self.num_tokens))]
        return torch.tensor(slots, dtype=torch.long, device=ctx.device)


__all__ = ["EPIC"]
