"""`FrozenDocumentStudent`: trailer-only distillation over cached document KV (the cheap second stage).

With the header frozen, nothing before a trailer is trainable: the KV of the preamble and of every `[header | doc]`
block is the frozen model's own and does not change from epoch to epoch. It is computed once per row (no grad), at
the slots' final positions, and kept; every training step then runs only the *new* slots `[T_1 .. T_n | query +
answer]` with grad, over that KV as a past cache. The attention mask of the new slots is the block-diagonal student's
mask (`masks.model_attention_mask`) restricted to them, so the logits equal the full student's exactly (tested in
float64): trailer *i* sees `[H doc]_i` and itself, the query sees everything before it.

Why not re-rotate packets here: the KV is computed directly at its final positions from the same collator layout
the full student uses, so there is nothing to rotate and one layout serves both students. The inference path
(packets encoded alone at 0, re-rotated by `compose.py`) is tested equal to that layout separately.

Per step this runs ~`n_docs x trailer + query + answer` tokens with grad instead of the whole prompt; the first epoch
also pays one no-grad forward per row. Memory: the cached KV, e.g. ~12 KB per prompt token for Qwen2.5-0.5B in bf16.

Example
-------
>>> student = FrozenDocumentStudent(model, adapter)          # adapter.header frozen, trailer trains
>>> trainer = PacketDistillationTrainer(model=student, data_collator=DistillationCollator(8, 8), ...)
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from transformers import DynamicCache

from ..adapter import PacketAdapter
from ..compat import cache_kwargs
from ..layout import embed_student
from ..masks import JOINT, PAD, model_attention_mask, positions_from_blocks
from ..model_structure import base_model, decoder
from .model import PacketDistillationModel


class FrozenDocumentStudent(PacketDistillationModel):
    """A `PacketDistillationModel` whose header is frozen and whose document KV is computed once per row.

    Takes the same collator batches as the full student and returns the same loss, so it trains with a stock
    `Trainer` / `PacketDistillationTrainer`. Only `adapter.trailer` receives gradients.

    Parameters
    ----------
    model, adapter, loss_type:
        As for `PacketDistillationModel`.
    max_cached_rows:
        Rows whose past KV is kept (least recently used dropped first); `None`: all (a training set's worth).
    """

    def __init__(self, model: Any, adapter: PacketAdapter, loss_type: str = "kl", max_cached_rows: int | None = None):
        super().__init__(model, adapter, loss_type=loss_type)
        adapter.header.requires_grad_(False)
        self.max_cached_rows = max_cached_rows
        self._kv: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], ...]] = {}
        self.rows_encoded = 0  # past forwards run (a resumed or later epoch reuses them)

    # ------------------------------------------------------------------ layout
    def _split(self, slots: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Past slots (preamble, headers, documents) and new slots (trailers, query, answer) of one row."""
        h = self.adapter.num_header_tokens
        real = blocks != PAD
        new = real & ((blocks == JOINT) | (slots >= h))
        past = real & ~new
        return past.nonzero().squeeze(-1), new.nonzero().squeeze(-1)

    def _row_key(self, ids: torch.Tensor, slots: torch.Tensor, blocks: torch.Tensor, past: torch.Tensor) -> str:
        h = hashlib.sha256(self.adapter.header.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        for t in (ids, slots, blocks):
            h.update(t[past].to("cpu").numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ past KV (no grad, cached)
    @torch.no_grad()
    def _encode_past(self, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
        """One padded no-grad forward over the past slots of `rows`; returns per row the per-layer (keys, values)."""
        embed = self.model.get_input_embeddings()
        width = max(int(r[3].numel()) for r in rows)
        b = len(rows)
        device = embed.weight.device
        ids = torch.zeros(b, width, dtype=torch.long, device=device)
        slots = torch.full((b, width), -1, dtype=torch.long, device=device)
        blocks = torch.full((b, width), PAD, dtype=torch.long, device=device)
        positions = torch.zeros(b, width, dtype=torch.long, device=device)
        for i, (r_ids, r_slots, r_blocks, past, full_pos) in enumerate(rows):
            n = past.numel()
            ids[i, :n], slots[i, :n], blocks[i, :n] = r_ids[past], r_slots[past], r_blocks[past]
            positions[i, :n] = full_pos[past]
        embeds = embed_student(self.model, self.adapter, ids, slots)  # past slots hold header slots only
        # the past slots keep their order, so the block-diagonal mask of the compacted row is the full one restricted
        mask = model_attention_mask(self.model, blocks, dtype=embeds.dtype)
        cache = DynamicCache()  # full layers: sliding-window layers keep every slot, the mask applies the window
        decoder(base_model(self.model))(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        use_cache=True, **cache_kwargs(cache))
        out = []
        for i, r in enumerate(rows):
            n = r[3].numel()
            out.append(tuple((layer.keys[i, :, :n].clone(), layer.values[i, :, :n].clone()) for layer in cache.layers))
        self.rows_encoded += len(rows)
        return out

    def _past_kv(self, batch_rows: list[tuple]) -> list[tuple]:
        keys = [self._row_key(r[0], r[1], r[2], r[3]) for r in batch_rows]
        todo = [i for i, k in enumerate(keys) if k not in self._kv]
        if todo:
            for i, kv in zip(todo, self._encode_past([batch_rows[i] for i in todo])):
                self._kv[keys[i]] = kv
        out = []
        for k in keys:
            out.append(self._kv.pop(k))
            self._kv[k] = out[-1]  # most recently used last
        while self.max_cached_rows is not None and len(self._kv) > max(self.max_cached_rows, len(keys)):
            self._kv.pop(next(iter(self._kv)))
        return out

    # ------------------------------------------------------------------ student
    def student_logits(self, student_input_ids, student_slots, student_block_ids, student_label_positions):
        b = student_input_ids.shape[0]
        full_pos = positions_from_blocks(student_block_ids)
        splits = [self._split(student_slots[i], student_block_ids[i]) for i in range(b)]
        rows = [(student_input_ids[i], student_slots[i], student_block_ids[i], splits[i][0], full_pos[i])
                for i in range(b)]
        past_kv = self._past_kv(rows)
        embed = self.model.get_input_embeddings()
        device = embed.weight.device
        n_past = max(int(s[0].numel()) for s in splits)
        n_new = max(int(s[1].numel()) for s in splits)
        ids = torch.zeros(b, n_new, dtype=torch.long, device=device)
        slots = torch.full((b, n_new), -1, dtype=torch.long, device=device)
        positions = torch.zeros(b, n_new, dtype=torch.long, device=device)
        label_positions = torch.full_like(student_label_positions, -1)
        for i, (past, new) in enumerate(splits):
            m = new.numel()
            ids[i, :m], slots[i, :m], positions[i, :m] = student_input_ids[i, new], student_slots[i, new], full_pos[i, new]
            where = torch.full((student_input_ids.shape[1],), -1, dtype=torch.long, device=device)
            where[new] = torch.arange(m, device=device)
            valid = student_label_positions[i] >= 0
            label_positions[i, valid] = where[student_label_positions[i, valid]]
        embeds = embed_student(self.model, self.adapter, ids, slots)  # new slots hold trailer slots only
        full_mask = model_attention_mask(self.model, student_block_ids, dtype=embeds.dtype)
        mask = _restrict(full_mask, splits, (n_past, n_new))
        cache = DynamicCache()  # full layers (see _encode_past)
        for layer_idx in range(len(past_kv[0])):
            k0 = past_kv[0][layer_idx][0]
            keys = k0.new_zeros(b, k0.shape[0], n_past, k0.shape[-1])
            values = keys.clone()
            for i, kv in enumerate(past_kv):
                n = kv[layer_idx][0].shape[-2]
                keys[i, :, :n], values[i, :, :n] = kv[layer_idx]
            cache.update(keys.to(device), values.to(device), layer_idx)
        hidden = decoder(base_model(self.model))(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                                 use_cache=True, **cache_kwargs(cache)).last_hidden_state
        idx = label_positions.clamp_min(0)
        picked = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return base_model(self.model).get_output_embeddings()(picked)


def _restrict(mask: Any, splits: list, sizes: tuple[int, int]) -> Any:
    """The block-diagonal mask of the full row restricted to (new queries) x (past keys, new keys), per layer type.

    Padding columns stay masked; padding rows may see themselves only, so no row is fully masked (no NaN).
    """
    if isinstance(mask, dict):
        return {k: _restrict(v, splits, sizes) for k, v in mask.items()}
    n_past, n_new = sizes
    low = torch.finfo(mask.dtype).min
    out = mask.new_full((mask.shape[0], 1, n_new, n_past + n_new), low)
    for i, (past, new) in enumerate(splits):
        rows = mask[i, 0, new]
        out[i, 0, : new.numel(), : past.numel()] = rows[:, past]
        out[i, 0, : new.numel(), n_past: n_past + new.numel()] = rows[:, new]
        pad = torch.arange(new.numel(), n_new, device=mask.device)
        out[i, 0, pad, n_past + pad] = 0
    return out


__all__ = ["FrozenDocumentStudent"]
