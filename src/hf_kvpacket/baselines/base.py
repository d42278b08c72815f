"""What every method shares: the timed prefill and greedy generation (the context and the prompt parts every method
draws from are in :mod:`.context`, re-exported here).

A method (one file each, a `@dataclass` of its knobs) only says how the context is turned into a cache before the
query is prefilled: :meth:`BaselineMethod.prefill` returns the `generate()` inputs (and the analytic FLOPs it spent).
:meth:`BaselineMethod.answer` times it: the clock starts before the packet lookup / composition / recompute and stops
when the first token's logits exist (a logits processor inside `generate()` records the time), so TTFT covers
exactly "cache preparation + query prefill" for every method, and "joint prefill" for the full recompute.

Every method reads the *same token ids* (preamble, each document, query) from :class:`PromptParts`, so methods differ
only in how attention over the documents was computed.

Example
-------
>>> from hf_kvpacket.baselines import MethodContext, KVPacket, FullRecompute
>>> ctx = MethodContext(model, tok, adapter=adapter)
>>> example = {"documents": ["Ada was born in 1815.", "Paris is in France."], "question": "When was Ada born?"}
>>> FullRecompute().answer(ctx, example, max_new_tokens=16).answer_text
'1815'
>>> KVPacket().answer(ctx, example).ttft_s   # composition + query prefill only
0.031
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..adapter import PacketAdapter
from ..cache import PacketCache
from ..errors import KVPacketError
from .context import MethodContext, PromptParts
from .flops import FlopCounter


class BaselineError(KVPacketError):
    """A method cannot run in this setting (e.g. KV Packet without an adapter, selective recompute on sliding layers)."""


# ---------------------------------------------------------------------------------------------------------- inputs
@dataclass
class MethodResult:
    """What one method did for one example.

    Attributes
    ----------
    answer_text:
        The generated answer, decoded with `skip_special_tokens=True` and stripped.
    ttft_s:
        Seconds from the start of cache preparation (packet lookup, composition, recompute) to the first token's
        logits; for the full recompute, the joint prefill.
    flops:
        Analytic FLOPs over the same span (see :mod:`hf_kvpacket.baselines.flops`).
    recomputed_tokens:
        Document tokens whose KV was computed at query time (all of them for the full recompute, 0 for packets).
    context_tokens:
        Cache slots before the query (packets include their header/trailer slots).
    query_tokens, new_tokens:
        Query length and number of generated tokens.
    total_s:
        Seconds for the whole answer (TTFT + decoding).
    prepare_s:
        Untimed set-up before TTFT starts: encoding this example's packets when they were not resident yet (the
        encode-once cost a store pays on a miss).
    answer_ids:
        The generated token ids, special tokens included (e.g. to compare first tokens with a reference answer).
    """

    answer_text: str
    ttft_s: float
    flops: float
    recomputed_tokens: int
    context_tokens: int = 0
    query_tokens: int = 0
    new_tokens: int = 0
    total_s: float = 0.0
    prepare_s: float = 0.0
    answer_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Prefill:
    """What :meth:`BaselineMethod.prefill` hands to `generate()`, with the accounting of the work it did.

    Attributes
    ----------
    inputs:
        `generate()` keyword arguments: `input_ids` (the tokens still to prefill), `attention_mask`, optionally
        `position_ids` and the cache under the installed transformers' name.
    flops:
        Analytic FLOPs of the preparation *and* of the query prefill that `generate()` will run.
    recomputed_tokens, context_tokens:
        See :class:`MethodResult`.
    """

    inputs: dict[str, Any]
    flops: float
    recomputed_tokens: int
    context_tokens: int


# ---------------------------------------------------------------------------------------------------------- timing
class FirstTokenTimer(LogitsProcessor):
    """A no-op logits processor that records when `generate()` first has logits (the end of TTFT)."""

    def __init__(self) -> None:
        self.time: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.time is None:
            if scores.is_cuda:
                torch.cuda.synchronize(scores.device)
            self.time = time.perf_counter()
        return scores


# ---------------------------------------------------------------------------------------------------------- methods
@dataclass
class BaselineMethod:
    """Base of every method: subclasses are dataclasses of their knobs and implement :meth:`prefill`.

    `answer(ctx, example, max_new_tokens)` is the same for all: build the token ids, make the packets resident
    (untimed), then time :meth:`prefill` plus `generate()` up to the first logits, and decode greedily.

    Class attributes
    ----------------
    name:
        Registry name (``"kv_packet"``, ``"cacheblend"``, ...).
    """

    name: ClassVar[str] = "base"
    #: How tables and plots name the method (the one place for it: evaluation and benchmarks both read it).
    display: ClassVar[str] = "base"

    # ------------------------------------------------------------------ to override
    def prepare(self, ctx: MethodContext, parts: PromptParts) -> None:
        """Untimed set-up (e.g. make this example's packets resident). Default: nothing."""

    def prefill(self, ctx: MethodContext, parts: PromptParts) -> Prefill:
        """Timed: turn the context into `generate()` inputs (lookup, composition, recompute)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def label(self) -> str:
        """`name`, plus the knobs that differ from their defaults, e.g. ``cacheblend(recompute_ratio=0.3)``."""
        changed = []
        for f in fields(self):
            if not f.repr or f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if value is not f.default and value != f.default:
                changed.append(f"{f.name}={value}")
        return f"{self.name}({','.join(changed)})" if changed else self.name

    def answer(self, ctx: MethodContext, example: PromptParts | Mapping[str, Any], max_new_tokens: int = 32) -> MethodResult:
        """Answer one example greedily and measure TTFT and FLOPs.

        Parameters
        ----------
        ctx:
            Model, tokenizer, template, adapter and resident packets.
        example:
            A dataset row (`documents`, `question`) or :class:`PromptParts`.
        max_new_tokens:
            Generation budget (greedy; stops early at the model's EOS tokens).

        Returns
        -------
        MethodResult
        """
        if max_new_tokens < 1:
            raise KVPacketError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        parts = ctx.parts(example)
        prepare_start = time.perf_counter()
        self.prepare(ctx, parts)
        prepare_s = time.perf_counter() - prepare_start
        timer = FirstTokenTimer()
        tok = ctx.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        if pad is None:
            pad = getattr(ctx.model.generation_config, "pad_token_id", None)
        with torch.no_grad():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            start = time.perf_counter()
            pre = self.prefill(ctx, parts)
            n_in = pre.inputs["input_ids"].shape[1]
            out = ctx.model.generate(**pre.inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     logits_processor=LogitsProcessorList([timer]), pad_token_id=pad)
            end = time.perf_counter()
        new = out[0, n_in:]
        text = tok.decode(new.tolist(), skip_special_tokens=True).strip()
        return MethodResult(
            answer_text=text,
            ttft_s=(timer.time if timer.time is not None else end) - start,
            flops=pre.flops,
            recomputed_tokens=pre.recomputed_tokens,
            context_tokens=pre.context_tokens,
            query_tokens=len(parts.query),
            new_tokens=int(new.numel()),
            total_s=end - start,
            prepare_s=prepare_s,
            answer_ids=tuple(new.tolist()),
        )

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def _plain_inputs(ctx: MethodContext, ids: Sequence[int]) -> dict[str, Any]:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=ctx.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    @staticmethod
    def _compose(ctx: MethodContext, parts: PromptParts, adapter: PacketAdapter | None) -> PacketCache:
        """Lookup + composition of preamble and packets (timed part of every packet method)."""
        packets = ctx.lookup_packets(parts.documents, adapter)
        ctx.mark("load")
        preamble = ctx.preamble_packet(parts.preamble)
        return PacketCache.from_packets(packets, model=ctx.model, tokenizer=ctx.tokenizer, preamble=preamble,
                                        adapter=adapter)

    @staticmethod
    def _query_flops(ctx: MethodContext, counter: FlopCounter, parts: PromptParts, past: int) -> None:
        counter.prefill(len(parts.query), past=past, logits=1)


# ---------------------------------------------------------------------------------------------------------- stitched
@dataclass
class StitchedPackets(BaselineMethod):
    """Packets composed behind the preamble (re-rotated), only the query prefilled. Base of the packet methods."""

    def packet_adapter(self, ctx: MethodContext) -> PacketAdapter | None:
        """The adapter the packets are encoded with (`None`: plain documents)."""
        return None

    def prepare(self, ctx: MethodContext, parts: PromptParts) -> None:
        ctx.ensure_packets(parts.documents, self.packet_adapter(ctx))
        ctx.preamble_packet(parts.preamble)

    def prefill(self, ctx: MethodContext, parts: PromptParts) -> Prefill:
        if not parts.documents and not parts.preamble:
            counter = FlopCounter(ctx.dims)
            self._query_flops(ctx, counter, parts, past=0)
            return Prefill(self._plain_inputs(ctx, parts.query), counter.total, 0, 0)
        cache = self._compose(ctx, parts, self.packet_adapter(ctx))
        counter = FlopCounter(ctx.dims)
        counter.rerotation(cache.composed_length - len(parts.preamble))
        recomputed = self.recompute(ctx, parts, cache, counter)
        self._query_flops(ctx, counter, parts, past=cache.composed_length)
        return Prefill(cache.inputs_for(list(parts.query)), counter.total, recomputed, cache.composed_length)

    def recompute(self, ctx: MethodContext, parts: PromptParts, cache: PacketCache, counter: FlopCounter) -> int:
        """Hook for selective recompute on the composed cache; returns the number of recomputed tokens."""
        return 0


# The selective-recompute machinery (CacheBlend, EPIC) lives in selective.py; re-exported for old imports.
from .selective import (  # noqa: E402,F401
    ProbeStop,
    ScatterCache,
    SelectiveRecompute,
    probe_deviation,
    run_selected,
    slot_mask,
    top_fraction,
)

__all__ = [
    "BaselineError",
    "PromptParts",
    "MethodResult",
    "Prefill",
    "MethodContext",
    "FirstTokenTimer",
    "BaselineMethod",
    "StitchedPackets",
    "SelectiveRecompute",
    "ScatterCache",
    "ProbeStop",
    "slot_mask",
    "run_selected",
    "probe_deviation",
    "top_fraction",
]
