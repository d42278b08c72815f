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


def wrapped_sequence(
    model: nn.Module,
    preamble_ids: Sequence[int],
    documents: Sequence[Sequence[int]],
    query_ids: Sequence[int],
    adapter: PacketAdapter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`inputs_embeds` of shape `(1, L, hidden)` and `block_ids` of shape `(1, L)` for one example."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    parts, blocks = [], []

    def ids_embed(ids: Sequence[int]) -> torch.Tensor:
        return embed(torch.tensor([list(ids)], dtype=torch.long, device=device))

    if len(preamble_ids):
        parts.append(ids_embed(preamble_ids))
        blocks += [0] * len(preamble_ids)
    for i, doc in enumerate(documents, start=1):
        e = ids_embed(doc)
        e = adapter.wrap(e) if adapter is not None else e
        parts.append(e)
        blocks += [i] * e.shape[1]
    if len(query_ids):
        parts.append(ids_embed(query_ids))
        blocks += [JOINT] * len(query_ids)
    return torch.cat(parts, dim=1), torch.tensor([blocks], dtype=torch.long, device=device)


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
