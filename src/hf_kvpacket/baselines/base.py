"""What every method shares: the prompt parts, resident packets, the timed prefill and greedy generation.

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

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Cache, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..adapter import PacketAdapter, adapter_fingerprint
from ..cache import PacketCache
from ..compat import cache_kwargs
from ..errors import KVPacketError
from ..packet import Packet, encode_preamble
from ..prompt import PromptTemplate
from ..model_structure import decoder
from ..rope import get_rerotator
from ..store import PacketStore
from .flops import FlopCounter, ModelDims


class BaselineError(KVPacketError):
    """A method cannot run in this setting (e.g. KV Packet without an adapter, selective recompute on sliding layers)."""


# ---------------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PromptParts:
    """Token ids of one example: the preamble, each document (as encoded into its packet), and the query.

    Examples
    --------
    >>> parts = PromptParts(preamble=[1, 2], documents=[[5, 6, 7], [8]], query=[9, 10])
    >>> parts.context_ids, parts.num_document_tokens
    ([1, 2, 5, 6, 7, 8], 4)
    """

    preamble: tuple[int, ...]
    documents: tuple[tuple[int, ...], ...]
    query: tuple[int, ...]

    def __init__(self, preamble: Sequence[int], documents: Sequence[Sequence[int]], query: Sequence[int]):
        object.__setattr__(self, "preamble", tuple(int(t) for t in preamble))
        object.__setattr__(self, "documents", tuple(tuple(int(t) for t in d) for d in documents))
        object.__setattr__(self, "query", tuple(int(t) for t in query))
        if not self.query:
            raise KVPacketError("The query has no tokens; every method needs at least one query token to prefill.")
        if any(len(d) == 0 for d in self.documents):
            raise KVPacketError("A document has no tokens; drop empty documents before answering.")

    @property
    def context_ids(self) -> list[int]:
        """Preamble then every document, in order: what the full recompute prefills before the query."""
        return list(self.preamble) + [t for d in self.documents for t in d]

    @property
    def num_document_tokens(self) -> int:
        return sum(len(d) for d in self.documents)


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


# ---------------------------------------------------------------------------------------------------------- context
class MethodContext:
    """Model, tokenizer, prompt template, optional adapter and the packet stores every method draws from.

    Packets come from :class:`~hf_kvpacket.PacketStore` (one per adapter), exactly as a user's ``generate()`` gets
    them: encoded on first need (outside any timing), then served from the store's memory. Give `store_dir` to keep
    them on disk between runs (and to measure loads from disk); the default is a memory-only store.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM (eval mode) and its tokenizer.
    template:
        Prompt layout; default `PromptTemplate.from_tokenizer(tokenizer, system_prompt)`.
    adapter:
        The trained header/trailer adapter used by :class:`~hf_kvpacket.baselines.KVPacket` (optional).
    system_prompt:
        Only used when `template` is not given.
    store_dir:
        Folder of the packet stores (one store per adapter shares it: keys include the adapter); `None`: memory only.
    max_memory_bytes:
        In-memory budget of each store (least recently used packets are dropped first).
    max_resident_packets:
        Deprecated (the stores bound memory in bytes); accepted and ignored.

    Examples
    --------
    >>> ctx = MethodContext(model, tok, adapter=PacketAdapter.from_pretrained("adapters/smollm2-135m-instruct-mixture"))
    >>> parts = ctx.parts({"documents": ["..."], "question": "..."})
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        template: PromptTemplate | None = None,
        adapter: PacketAdapter | None = None,
        system_prompt: str | None = None,
        max_resident_packets: int | None = None,
        store_dir: str | None = None,
        max_memory_bytes: int = 2 * 2**30,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate.from_tokenizer(tokenizer, system_prompt=system_prompt)
        self.adapter = adapter
        if adapter is not None:
            adapter.check_model(model)
        self.store_dir, self.max_memory_bytes = store_dir, max_memory_bytes
        self.dims = ModelDims.from_model(model)
        self.device = model.get_input_embeddings().weight.device
        get_rerotator(model)  # the one-time exactness gate runs here, never inside a timed prefill
        self._stores: dict[str, PacketStore] = {}
        self._preambles: dict[tuple[int, ...], Packet] = {}

    def store_for(self, adapter: PacketAdapter | None) -> PacketStore:
        """The packet store of `adapter` (`None`: plain packets), created on first use."""
        fp = adapter_fingerprint(adapter)
        if fp not in self._stores:
            self._stores[fp] = PacketStore(self.store_dir, self.model, self.tokenizer, adapter,
                                           max_memory_bytes=self.max_memory_bytes)
        return self._stores[fp]

    # ------------------------------------------------------------------ prompt
    def parts(self, example: PromptParts | Mapping[str, Any]) -> PromptParts:
        """Token ids of an example: a :class:`PromptParts`, or a mapping with `documents` and `question`."""
        if isinstance(example, PromptParts):
            return example
        try:
            documents, question = example["documents"], example["question"]
        except (KeyError, TypeError):
            raise KVPacketError(
                f"An example must be PromptParts or a mapping with 'documents' and 'question', got {type(example)}."
            ) from None
        ids = self.template.token_ids(self.tokenizer, list(documents), question)
        return PromptParts(ids["preamble"], ids["documents"], ids["query"])

    # ------------------------------------------------------------------ packets (through the store)
    def ensure_packets(self, documents: Sequence[Sequence[int]], adapter: PacketAdapter | None) -> None:
        """Make the documents' packets resident in their store (untimed: this is the offline encode-once step)."""
        self.store_for(adapter).get_many([list(d) for d in documents], progress=False)

    def lookup_packets(self, documents: Sequence[Sequence[int]], adapter: PacketAdapter | None) -> list[Packet]:
        """The documents' packets from their store's memory (call :meth:`ensure_packets` first; a packet that is not
        resident is an error here, so no timed prefill ever encodes or reads a file unnoticed)."""
        store = self.store_for(adapter)
        docs = [list(d) for d in documents]
        if not all(store.in_memory(d) for d in docs):
            raise KVPacketError("A packet is not resident: call ctx.ensure_packets(...) before the timed prefill "
                                "(or raise max_memory_bytes).")
        return store.get_many(docs, progress=False)

    def preamble_packet(self, preamble: Sequence[int]) -> Packet | None:
        """The preamble encoded once at position 0 (no adapter), or `None` for an empty preamble."""
        key = tuple(preamble)
        if not key:
            return None
        if key not in self._preambles:
            self._preambles[key] = encode_preamble(self.model, list(key))
        return self._preambles[key]

    def clear(self, preambles: bool = True) -> None:
        """Drop every resident packet (e.g. between examples), and the encoded preambles unless `preambles=False`."""
        for store in self._stores.values():
            store.clear_memory()
        if preambles:
            self._preambles.clear()

    @property
    def num_resident_packets(self) -> int:
        return sum(store.num_in_memory for store in self._stores.values())


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


# ---------------------------------------------------------------------------------------------------------- selective
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
