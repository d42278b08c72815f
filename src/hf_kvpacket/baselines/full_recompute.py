"""Full recompute: one joint prefill of preamble + every document + query (the quality reference)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BaselineMethod, MethodContext, Prefill, PromptParts
from .flops import FlopCounter


@dataclass
class FullRecompute(BaselineMethod):
    """Prefill the whole prompt jointly, as if no cache existed: every document attends to the ones before it.

    The upper bound on quality and the most expensive method: TTFT is the joint prefill, FLOPs grow with the square of
    the context. Its answers are the reference for the *fidelity* metric of every other method.

    Examples
    --------
    >>> FullRecompute().answer(ctx, {"documents": docs, "question": q}, max_new_tokens=32).answer_text
    """

    name = "full_recompute"

    display = "full recompute"

    def prefill(self, ctx: MethodContext, parts: PromptParts) -> Prefill:
        ids = parts.context_ids + list(parts.query)
        counter = FlopCounter(ctx.dims)
        counter.prefill(len(ids), past=0, logits=1)
        return Prefill(self._plain_inputs(ctx, ids), counter.total, parts.num_document_tokens, len(parts.context_ids))


__all__ = ["FullRecompute"]
