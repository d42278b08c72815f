"""`Packet`: the immutable KV cache of one document, encoded alone at position 0, and the encoder that makes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapter import PacketAdapter, adapter_fingerprint
from .compat import cache_kwargs, output_cache
from .errors import KVPacketError
from .fingerprint import FORMAT_VERSION, model_fingerprint


@dataclass(frozen=True, eq=False)
class Packet:
    """KV cache of one document, `[header | document | trailer]` encoded alone at positions `0..length-1`.

    Tensors are per layer, shaped `(num_kv_heads, length, head_dim)`, keys stored after RoPE at base position 0. A
    packet is never modified: composing copies it into a fresh `PacketCache`.

    Attributes
    ----------
    keys, values:
        One tensor per decoder layer.
    token_ids:
        The document's token ids (without header/trailer).
    model_fingerprint, adapter_fingerprint:
        What it was made with; `adapter_fingerprint == "none"` for an unwrapped packet (a preamble, no recompute).
    num_header_tokens, num_trailer_tokens:
        Adapter slots around the document.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    token_ids: tuple[int, ...]
    model_fingerprint: str
    adapter_fingerprint: str
    num_header_tokens: int = 0
    num_trailer_tokens: int = 0
    format_version: str = FORMAT_VERSION
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise KVPacketError("A packet needs one key and one value tensor per layer.")
        expected = len(self.token_ids) + self.num_header_tokens + self.num_trailer_tokens
        ref = self.keys[0]
        if ref.dim() != 3:
            raise KVPacketError(f"Packet layer 0 keys have shape {tuple(ref.shape)}; expected (kv_heads, slots, head_dim).")
        if not ref.is_floating_point():
            raise KVPacketError(f"Packet layer 0 keys are {ref.dtype}; packets hold floating-point states.")
        # Every layer, not just the first: a short layer would be composed from uninitialised memory.
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            for what, t in (("keys", k), ("values", v)):
                if t.dim() != 3 or t.shape[-2] != expected:
                    raise KVPacketError(
                        f"Packet layer {i} {what} have shape {tuple(t.shape)}, but header + tokens + trailer = "
                        f"{expected} slots: expected (kv_heads, {expected}, head_dim). Re-encode the document."
                    )
                if t.shape[0] != ref.shape[0] or t.shape[-1] != ref.shape[-1]:
                    raise KVPacketError(
                        f"Packet layer {i} {what} have shape {tuple(t.shape)}, layer 0 keys {tuple(ref.shape)}: every "
                        "layer must have the same KV heads and head dim. Re-encode the document."
                    )
                if t.dtype != ref.dtype or t.device != ref.device:
                    raise KVPacketError(
                        f"Packet layer {i} {what} are {t.dtype} on {t.device}, layer 0 keys {ref.dtype} on "
                        f"{ref.device}: a packet lives in one dtype on one device."
                    )

    @property
    def length(self) -> int:
        """Number of cache slots (header + document + trailer)."""
        return self.keys[0].shape[-2]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def is_wrapped(self) -> bool:
        return self.adapter_fingerprint != "none"

    def to(self, device: torch.device | str | None = None, non_blocking: bool = False) -> "Packet":
        """A copy on another device (`pin_memory()` first for overlapped host-to-device copies)."""
        move = lambda ts: tuple(t.to(device, non_blocking=non_blocking) for t in ts)  # noqa: E731
        return Packet(move(self.keys), move(self.values), self.token_ids, self.model_fingerprint,
                      self.adapter_fingerprint, self.num_header_tokens, self.num_trailer_tokens, self.format_version,
                      dict(self.meta))

    def pin_memory(self) -> "Packet":
        pin = lambda ts: tuple(t.pin_memory() for t in ts)  # noqa: E731
        return Packet(pin(self.keys), pin(self.values), self.token_ids, self.model_fingerprint,
                      self.adapter_fingerprint, self.num_header_tokens, self.num_trailer_tokens, self.format_version,
                      dict(self.meta))


def _embed_wrapped(
    model: nn.Module, docs: Sequence[Sequence[int]], adapter: PacketAdapter | None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded `inputs_embeds` of `[header | doc | trailer]` per document, with the attention mask."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    seqs = []
    for ids in docs:
        e = embed(torch.tensor([list(ids)], dtype=torch.long, device=device))
        seqs.append((adapter.wrap(e) if adapter is not None else e)[0])
    lengths = [s.shape[0] for s in seqs]
    width = max(lengths)
    batch = seqs[0].new_zeros(len(seqs), width, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        batch[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return batch, mask, lengths


@torch.no_grad()
def encode_packets(
    model: nn.Module,
    documents: Sequence[Sequence[int]],
    adapter: PacketAdapter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Packet]:
    """Encode documents (token id lists) into packets, each alone at position 0, `batch_size` at a time.

    Parameters
    ----------
    model:
        The frozen base model (a transformers causal LM, or a `peft.PeftModel` on one).
    documents:
        Token ids of each document, without BOS (a packet sits in the middle of a prompt).
    adapter:
        Header/trailer soft tokens; `None` encodes plain documents ("no recompute" baseline, or a preamble).

    Example
    -------
    >>> ids = [tok(d, add_special_tokens=False).input_ids for d in docs]
    >>> packets = encode_packets(model, ids, adapter)
    """
    from transformers import DynamicCache

    from .rope import get_rerotator

    get_rerotator(model)  # refuse unsupported models before spending compute
    if adapter is not None:
        adapter.check_model(model)
    if any(len(d) == 0 for d in documents):
        raise KVPacketError("Cannot encode an empty document; drop it or give it at least one token.")
    model_fp, adapter_fp = model_fingerprint(model), adapter_fingerprint(adapter)
    n_head = adapter.num_header_tokens if adapter is not None else 0
    n_tail = adapter.num_trailer_tokens if adapter is not None else 0
    order = sorted(range(len(documents)), key=lambda i: len(documents[i]))  # similar lengths share a batch
    out: list[Packet | None] = [None] * len(documents)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(documents), desc="encoding packets", unit="doc", disable=not progress or len(documents) < 2)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            embeds, mask, lengths = _embed_wrapped(model, [documents[i] for i in idx], adapter)
            positions = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0).expand(len(idx), -1)
            # A cache of full layers keeps every slot, also on sliding-window layers (the window is applied by the mask).
            result = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **cache_kwargs(DynamicCache()))
            cache = output_cache(result)
            for row, (i, n) in enumerate(zip(idx, lengths)):
                keys = tuple(layer.keys[row, :, :n].clone() for layer in cache.layers)
                values = tuple(layer.values[row, :, :n].clone() for layer in cache.layers)
                out[i] = Packet(keys, values, tuple(int(t) for t in documents[i]), model_fp, adapter_fp, n_head, n_tail)
            bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def encode_preamble(model: nn.Module, token_ids: Sequence[int]) -> Packet:
    """Encode a preamble (system prompt, chat header) once, unwrapped, at position 0 (include BOS here if any)."""
    return encode_packets(model, [token_ids], adapter=None, progress=False)[0]
