"""Query only: the preamble and the question, no documents (what the model knows without context)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import MethodContext, Prefill, PromptParts, StitchedPackets


@dataclass
class QueryOnly(StitchedPackets):
    """Answer without the documents: the resident preamble, then the query prefilled.

    A floor for quality (closed-book answers) and the lower bound of TTFT (no context to compose).

    Examples
    --------
    >>> QueryOnly().answer(ctx, {"documents": docs, "question": q}).recomputed_tokens
    0
    """

    name = "query_only"

    display = "query only (no documents)"

    @staticmethod
    def _without_documents(parts: PromptParts) -> PromptParts:
        return PromptParts(parts.preamble, [], parts.query)

    def prepare(self, ctx: MethodContext, parts: PromptParts) -> None:
        super().prepare(ctx, self._without_documents(parts))

    def prefill(self, ctx: MethodContext, parts: PromptParts) -> Prefill:
        return super().prefill(ctx, self._without_documents(parts))


__all__ = ["QueryOnly"]
