"""`PacketCache`: a `transformers.DynamicCache` composed from a preamble and stored packets.

Layout of one row (slots = positions, contiguous from 0)::

    [ preamble | packet 1 | packet 2 | ... | packet N ] [ query ... generated ]
      block 0    block 1    block 2          block N     sees everything

Each packet was encoded alone at position 0; composing copies it to its offset and re-rotates its keys by that
offset (once, in float64 angles). The query is then prefilled by `generate()` on top of the composed cache: no document
token is recomputed. A batch may give every row its own packets: rows are left-padded to a common length and the
padding is masked out through the attention mask returned by `inputs_for` (the standard left-padding convention of
transformers, so positions stay contiguous inside each row).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Sequence, Union

import torch
from torch import nn
from transformers import DynamicCache

from .adapter import NO_ADAPTER, PacketAdapter, adapter_fingerprint
from .compat import cache_kwargs
from .errors import (
    CacheReuseError,
    ContextTooLongError,
    EmptyQueryError,
    FingerprintMismatchError,
    KVPacketError,
)
from .fingerprint import FORMAT_VERSION, model_fingerprint
from .packet import Packet, encode_preamble
from .compose import CompositionPlan, append_packets, compose_rows
from .model_structure import decoder
from .rope import get_rerotator

Item = Union[Packet, str]
logger = logging.getLogger(__name__)
POSITION_OVERFLOW = ("warn", "raise")

_CompositionPlan = CompositionPlan  # the name tests and benchmarks used before compose.py

#: Decoders that carry the position guard (one forward pre-hook per decoder, a no-op for caches other than ours).
_GUARDED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _position_guard(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the decoder: lets a `PacketCache` see the positions of every forward that uses it.

    A cache's update never sees positions on transformers < 5.24, and a reused one-token query looks like a decoding
    step by its length alone; its positions give it away (they restart where the first call started).
    """
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, PacketCache):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        new = ids.shape[-1] if ids is not None else (embeds.shape[1] if embeds is not None else None)
        cache._before_forward(kwargs.get("position_ids"), new)


def _guard_positions(model: nn.Module) -> None:
    dec = decoder(model)
    if dec not in _GUARDED:
        dec.register_forward_pre_hook(_position_guard, with_kwargs=True)
        _GUARDED.add(dec)


class PacketCache(DynamicCache):
    """A `DynamicCache` pre-filled with a preamble and packets at consecutive offsets, ready for one `generate()`.

    Build it with `PacketCache.from_packets`, then pass `**cache.inputs_for(question)` to `model.generate`. The cache
    is handed over under the name the installed transformers expects (`cache=` from 5.24, `past_key_values=` before).
    `generate()` grows a cache in place, so a `PacketCache` serves exactly one call: build a fresh one per call
    (packets themselves are immutable and reused).

    Example
    -------
    >>> packets = store.get_many(documents)                     # encoded once, reused forever
    >>> cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=system_prompt)
    >>> out = model.generate(**cache.inputs_for("Who founded the company?"), max_new_tokens=32)

    A batch with its own packets per row: `PacketCache.from_packets([[p1, p2], [p3]], model=model, ...)`, then
    `cache.inputs_for(["question 1", "question 2"])`.
    """

    def __init__(self, config: Any = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        self.composed_length = 0
        self.row_lengths: list[int] = []
        self.adapter_fingerprint = NO_ADAPTER
        self.model_fingerprint = ""
        self.single_use = True
        self._prefilled = False
        self._tokenizer = None
        self._model_ref = None
        self._max_positions: int | None = None
        self._model_dtype: torch.dtype | None = None
        self._composing = False
        self._appended = 0  # slots added by forwards after composition (query prefill + decoding steps)
        self._pos_shift: list[int] = []  # per row: real query tokens - padded query width (left padding has no position)
        self.position_overflow = "warn"
        self._overflow_warned = False

    # ------------------------------------------------------------------ composition
    @classmethod
    def from_packets(
        cls,
        packets: Sequence[Item] | Sequence[Sequence[Item]],
        model: nn.Module,
        tokenizer: Any = None,
        preamble: str | Sequence[int] | Packet | None = None,
        adapter: PacketAdapter | None = None,
        single_use: bool = True,
        position_overflow: str = "warn",
    ) -> "PacketCache":
        """Compose `preamble + packets` for one row, or one list of packets per row for a batch.

        Parameters
        ----------
        packets:
            Packets (from `PacketStore.get_many` or `encode_packets`) laid one after another. In a single row, a `str`
            item is a plain-text segment, encoded normally in place (it attends to everything before it).
        model:
            The model the packets were made with (checked by fingerprint).
        tokenizer:
            Needed for `str` preambles, segments and queries.
        preamble:
            System prompt / chat header before the documents, encoded unwrapped (text, token ids or a `Packet` from
            `encode_preamble`, which saves re-encoding it every call). Shared by all rows.
        adapter:
            When given, every packet must have been encoded with exactly this adapter.
        single_use:
            Refuse a second prefill on this cache (the usual mistake of passing one cache to two `generate()` calls).
            Set `False` for assisted/speculative decoding, which prefills several tokens at a time.
        position_overflow:
            What generating past the model's `max_position_embeddings` does: `"warn"` (once, as `generate()` does
            for a plain prompt) or `"raise"` (`ContextTooLongError` at the step that would cross it).
        """
        if position_overflow not in POSITION_OVERFLOW:
            raise KVPacketError(f"position_overflow must be one of {POSITION_OVERFLOW}, got {position_overflow!r}.")
        batched = len(packets) > 0 and not isinstance(packets[0], (Packet, str))
        rows: list[list[Item]] = [list(r) for r in packets] if batched else [list(packets)]
        if not rows:
            raise KVPacketError("from_packets needs at least one row.")
        cache = cls(config=model.config)
        cache.single_use = single_use
        cache.position_overflow = position_overflow
        cache._tokenizer = tokenizer
        cache._model_ref = weakref.ref(model)
        cache._composing = True
        rerotator = get_rerotator(model)
        _guard_positions(model)
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        cache._model_dtype = param.dtype if param is not None else None
        cache._max_positions = rerotator.max_position_embeddings
        cache.model_fingerprint = model_fingerprint(model)
        pre = cache._preamble_packet(model, preamble)
        has_segments = any(isinstance(item, str) for row in rows for item in row)
        if has_segments and len(rows) > 1:
            raise KVPacketError(
                "Plain-text segments between packets are supported for a single row only; in a batch, put the text in "
                "the preamble or the query, or encode it as a packet."
            )
        adapter_fps = {p.adapter_fingerprint for row in rows for p in row if isinstance(p, Packet)}
        cache._check_packets([p for row in rows for p in row if isinstance(p, Packet)] + ([pre] if pre else []),
                             adapter, adapter_fps)
        cache.adapter_fingerprint = next(iter(adapter_fps)) if adapter_fps else NO_ADAPTER
        if has_segments:
            cache._compose_with_segments(model, rerotator, pre, rows[0])
        else:
            cache._compose_rows(model, rerotator, [([pre] if pre else []) + row for row in rows])
        cache._composing = False
        if cache._max_positions is not None and cache.composed_length > cache._max_positions:
            raise ContextTooLongError(
                f"Preamble + packets take {cache.composed_length} positions, more than the model's "
                f"max_position_embeddings={cache._max_positions}. Use fewer or shorter documents."
            )
        return cache

    def _preamble_packet(self, model: nn.Module, preamble: Any) -> Packet | None:
        if preamble is None or isinstance(preamble, Packet):
            return preamble
        ids = self._tokenize(preamble, add_special_tokens=True) if isinstance(preamble, str) else list(preamble)
        return encode_preamble(model, ids) if ids else None

    def _tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._tokenizer is None:
            raise KVPacketError("Pass `tokenizer=` to PacketCache.from_packets to use text preambles, segments or queries.")
        return self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def _check_packets(self, packets: list[Packet], adapter: PacketAdapter | None, adapter_fps: set[str]) -> None:
        for p in packets:
            if self._model_dtype is not None and p.dtype != self._model_dtype:
                raise FingerprintMismatchError(
                    f"A packet holds {p.dtype} states but the model computes in {self._model_dtype} (was the model "
                    "cast after encoding?). Re-encode the documents with the model as it is now (a PacketStore does "
                    "so automatically: its keys follow the model's dtype)."
                )
            if p.format_version != FORMAT_VERSION:
                raise FingerprintMismatchError(
                    f"Packet format version {p.format_version} differs from this library's {FORMAT_VERSION}; "
                    "re-encode the documents (a PacketStore does so automatically)."
                )
            if p.model_fingerprint != self.model_fingerprint:
                raise FingerprintMismatchError(
                    f"A packet was encoded with another model (fingerprint {p.model_fingerprint}, this model is "
                    f"{self.model_fingerprint}): other weights, revision, fine-tune or dtype. Re-encode it with this "
                    "model (PacketStore keys include the fingerprint, so a store does this for you)."
                )
        if len(adapter_fps) > 1:
            raise FingerprintMismatchError(
                f"Packets encoded with {len(adapter_fps)} different adapters cannot be mixed in one cache: "
                f"{sorted(adapter_fps)}. Encode every document with the same adapter."
            )
        if adapter is not None and adapter_fps and adapter_fps != {adapter_fingerprint(adapter)}:
            raise FingerprintMismatchError(
                f"Packets were encoded with adapter {sorted(adapter_fps)} but adapter {adapter.fingerprint} was given. "
                "Re-encode them with this adapter (or drop `adapter=`)."
            )

    def _compose_rows(self, model: nn.Module, rerotator, rows: list[list[Packet]]) -> None:
        self.row_lengths = compose_rows(self.layers, model, rerotator, rows)
        self.composed_length = max(self.row_lengths)

    def _compose_with_segments(self, model: nn.Module, rerotator, pre: Packet | None, row: list[Item]) -> None:
        """Single row with text segments: packets are stitched, each segment is prefilled in place on top."""
        tmp_rows: list[Packet] = [pre] if pre else []
        done = 0  # positions already in the cache
        for i, item in enumerate(row + [None]):
            if isinstance(item, Packet):
                tmp_rows.append(item)
                continue
            if tmp_rows:
                append_packets(self.layers, model, rerotator, tmp_rows, start=done)
                done += sum(p.length for p in tmp_rows)
                tmp_rows = []
            if isinstance(item, str):
                ids = self._tokenize(item)
                if not ids:
                    continue
                device = model.get_input_embeddings().weight.device
                pos = torch.arange(done, done + len(ids), device=device).unsqueeze(0)
                with torch.no_grad():
                    model(input_ids=torch.tensor([ids], device=device), position_ids=pos, use_cache=True,
                          logits_to_keep=1, **cache_kwargs(self))
                done += len(ids)
        self.composed_length = done
        self.row_lengths = [done]

    # ------------------------------------------------------------------ generate() hand-over
    def inputs_for(
        self, query: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        add_special_tokens: bool = False,
    ) -> dict[str, Any]:
        """Keyword arguments for `model.generate(**kwargs)` (or a forward): the query tokens, the attention mask over
        cache + query, explicit position ids, and this cache under the installed transformers' argument name.

        `query` is text (needs `tokenizer=`), token ids, or one of those per row. Queries of different lengths in a
        batch are left-padded; the padding is masked out.
        """
        if self._prefilled or self._appended:
            raise CacheReuseError(
                "This PacketCache was already used by a generate() call, which grew it in place. Build a fresh one "
                "with PacketCache.from_packets(...) per call; packets are reused, composition is cheap."
            )
        batch = len(self.row_lengths)
        if isinstance(query, torch.Tensor):
            queries = [q.tolist() for q in (query if query.dim() == 2 else query.unsqueeze(0))]
        elif isinstance(query, str):
            queries = [self._tokenize(query, add_special_tokens)]
        elif len(query) > 0 and isinstance(query[0], str):
            queries = [self._tokenize(q, add_special_tokens) for q in query]
        elif len(query) > 0 and not isinstance(query[0], int):
            queries = [list(q) for q in query]
        else:
            queries = [list(query)]
        if len(queries) == 1 and batch > 1:
            queries = queries * batch
        if len(queries) != batch:
            raise KVPacketError(f"{len(queries)} queries for a cache of {batch} rows.")
        if any(len(q) == 0 for q in queries):
            raise EmptyQueryError(
                "The query is empty: generate() needs at least one real new token after the cache (e.g. the question "
                "or the assistant turn header). Dummy tokens would be attended to and change the answer."
            )
        qmax = max(len(q) for q in queries)
        self._pos_shift = [len(q) - qmax for q in queries]
        if self._max_positions is not None and max(self.row_lengths) + qmax > self._max_positions:
            raise ContextTooLongError(
                f"Cache ({max(self.row_lengths)}) + query ({qmax}) exceed max_position_embeddings={self._max_positions}."
            )
        if len(set(len(q) for q in queries)) > 1 and any(getattr(layer, "is_sliding", False) for layer in self.layers):
            raise KVPacketError(
                "Queries of different lengths in one batch would put padding inside the sliding window of this "
                "model's sliding-window layers. Give queries of equal length (e.g. tokenize with padding to a common "
                "length and pass the token ids with real tokens only), or run the rows separately."
            )
        model = self._model_ref() if self._model_ref is not None else None
        device = model.get_input_embeddings().weight.device if model is not None else torch.device("cpu")
        pad_id = 0
        if self._tokenizer is not None and getattr(self._tokenizer, "pad_token_id", None) is not None:
            pad_id = self._tokenizer.pad_token_id
        input_ids = torch.full((batch, qmax), pad_id, dtype=torch.long)
        attention = torch.zeros(batch, self.composed_length + qmax, dtype=torch.long)
        positions = torch.zeros(batch, qmax, dtype=torch.long)
        for r, q in enumerate(queries):
            n = len(q)
            input_ids[r, qmax - n :] = torch.tensor(q)
            attention[r, self.composed_length - self.row_lengths[r] : self.composed_length] = 1
            attention[r, self.composed_length + qmax - n :] = 1
            positions[r, qmax - n :] = torch.arange(self.row_lengths[r], self.row_lengths[r] + n)
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": attention.to(device),
            "position_ids": positions.to(device),
            **cache_kwargs(self),
        }

    # ------------------------------------------------------------------ cache contract
    def _reused(self) -> CacheReuseError:
        return CacheReuseError(
            "A second prefill reached this PacketCache: it was already used by a generate() call, which grew it in "
            "place (the new tokens' positions restart behind the composed cache instead of continuing). Build a fresh "
            "PacketCache per call (or pass single_use=False for assisted decoding)."
        )

    def _before_forward(self, position_ids: torch.Tensor | None, new: int | None) -> None:
        """Called by the decoder's pre-hook before every forward over this cache (see `_position_guard`)."""
        if self._composing or not self.row_lengths:
            return
        if position_ids is not None and self.single_use and position_ids.numel():
            last = position_ids.reshape(-1, position_ids.shape[-1])[:, -1].tolist()
            rep = max(1, len(last) // len(self.row_lengths))
            for r, pos in enumerate(last):
                # the last new token of row r must sit right behind everything this row holds so far
                row = min(r // rep, len(self.row_lengths) - 1)
                shift = self._pos_shift[row] if self._pos_shift else 0
                if pos != self.row_lengths[row] + shift + self._appended + (new or 1) - 1:
                    raise self._reused()
        if self._max_positions is not None and new:
            end = max(self.row_lengths) + self._appended + new
            if end > self._max_positions:
                message = (f"This generation reaches position {end}, past the model's max_position_embeddings="
                           f"{self._max_positions} (composed cache {max(self.row_lengths)} + {self._appended + new} new "
                           "tokens): the model was not trained that far and answers may degrade. Lower max_new_tokens "
                           "or use fewer documents.")
                if self.position_overflow == "raise":
                    raise ContextTooLongError(message)
                if not self._overflow_warned:
                    self._overflow_warned = True
                    logger.warning(message)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if layer_idx == 0 and not self._composing:
            if self._prefilled and self.single_use and key_states.shape[-2] > 1:
                raise self._reused()
            self._prefilled = True
            self._appended += key_states.shape[-2]
        if layer is not None and layer.is_initialized and layer.keys.shape[0] != key_states.shape[0]:
            stored, incoming = layer.keys.shape[0], key_states.shape[0]
            if incoming % stored:
                raise KVPacketError(f"Batch of {incoming} rows does not fit a PacketCache of {stored} rows.")
            # generate() expands inputs for beams / num_return_sequences but not a pre-filled cache: compose once,
            # repeat here.
            layer.batch_repeat_interleave(incoming // stored)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
