"""The student layout as one sequence: `[preamble | H doc1 T | H doc2 T | ... | query]` with block ids.

One forward over this sequence with `model_attention_mask(block_ids)` and contiguous positions equals encoding every
packet alone, stitching and re-rotating them, then prefilling the query on top. Training uses it (differentiable
with respect to the adapter), and tests use it as the independent reference for `PacketCache`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .adapter import PacketAdapter
from .masks import JOINT, PAD, model_attention_mask, positions_from_blocks


def student_layout(
    preamble_ids: Sequence[int],
    documents: Sequence[Sequence[int]],
    tail_ids: Sequence[int],
    num_header_tokens: int = 0,
    num_trailer_tokens: int = 0,
    pad_token_id: int = 0,
) -> tuple[list[int], list[int], list[int]]:
    """Token ids, adapter slots and block ids of `[preamble | H doc1 T | ... | H docN T | tail]` (the one layout).

    `slots` is -1 for real tokens, `0..h-1` for header slots and `h..h+t-1` for trailer slots (their token id is
    `pad_token_id`, replaced by the soft token when embedded); blocks: 0 for the preamble, i for document i, `JOINT`
    for the tail (query, answer). The distillation collator and the exactness tests both build rows with it.
    """
    h, t = num_header_tokens, num_trailer_tokens
    ids, slots, blocks = list(preamble_ids), [-1] * len(preamble_ids), [0] * len(preamble_ids)
    for b, doc in enumerate(documents, start=1):
        ids += [pad_token_id] * h + list(doc) + [pad_token_id] * t
        slots += list(range(h)) + [-1] * len(doc) + list(range(h, h + t))
        blocks += [b] * (h + len(doc) + t)
    ids += list(tail_ids)
    slots += [-1] * len(tail_ids)
    blocks += [JOINT] * len(tail_ids)
    return ids, slots, blocks


def embed_student(model: nn.Module, adapter: PacketAdapter | None, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Input embeddings of a student layout: token embeddings, with the adapter's soft tokens at their slots."""
    embeds = model.get_input_embeddings()(ids)
    if adapter is None or adapter.num_header_tokens + adapter.num_trailer_tokens == 0:
        return embeds  # a 0/0 adapter is the no-recompute baseline
    soft = torch.cat([adapter.header, adapter.trailer], dim=0).to(embeds.dtype)
    is_slot = (slots >= 0).unsqueeze(-1)
    return torch.where(is_slot, soft[slots.clamp_min(0)], embeds)


def wrapped_sequence(
    model: nn.Module,
    preamble_ids: Sequence[int],
    documents: Sequence[Sequence[int]],
    query_ids: Sequence[int],
    adapter: PacketAdapter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`inputs_embeds` of shape `(1, L, hidden)` and `block_ids` of shape `(1, L)` for one example."""
    device = model.get_input_embeddings().weight.device
    h = adapter.num_header_tokens if adapter is not None else 0
    t = adapter.num_trailer_tokens if adapter is not None else 0
    ids, slots, blocks = student_layout(preamble_ids, documents, query_ids, h, t)
    as_tensor = lambda x: torch.tensor([x], dtype=torch.long, device=device)  # noqa: E731
    return embed_student(model, adapter, as_tensor(ids), as_tensor(slots)), as_tensor(blocks)


def pad_right(embeds: list[torch.Tensor], block_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack examples of different lengths, right-padded (padding block id `PAD`)."""
    width = max(e.shape[1] for e in embeds)
    out = embeds[0].new_zeros(len(embeds), width, embeds[0].shape[-1])
    blocks = torch.full((len(embeds), width), PAD, dtype=torch.long, device=block_ids[0].device)
    for i, (e, b) in enumerate(zip(embeds, block_ids)):
        out[i, : e.shape[1]] = e[0]
        blocks[i, : b.shape[1]] = b[0]
    return out, blocks


def block_forward(model: nn.Module, inputs_embeds: torch.Tensor, block_ids: torch.Tensor, **kwargs):
    """One forward over a wrapped sequence with the block-diagonal mask and contiguous positions."""
    mask = model_attention_mask(model, block_ids, dtype=inputs_embeds.dtype)
    return model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions_from_blocks(block_ids), **kwargs)
