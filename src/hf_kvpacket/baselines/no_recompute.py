"""No recompute: plain packets (no adapter) stitched behind the preamble, only the query prefilled."""

from __future__ import annotations

from dataclasses import dataclass

from .base import StitchedPackets


@dataclass
class NoRecompute(StitchedPackets):
    """Documents encoded alone at position 0 without header/trailer, re-rotated to their offsets and stitched.

    As cheap as KV Packet, but each document's KV never saw the ones before it and later documents carry their own
    attention-sink first tokens: quality collapses (the paper: NIAH F1 .387 vs .830 full recompute on
    Llama-3.1-8B). With one document and no preamble it *is* a plain prefill (a test checks this).

    Examples
    --------
    >>> NoRecompute().answer(ctx, {"documents": docs, "question": q}).ttft_s
    """

    name = "no_recompute"

    display = "no recompute"


__all__ = ["NoRecompute"]
