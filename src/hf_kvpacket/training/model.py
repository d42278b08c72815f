"""`PacketDistillationModel`: frozen base model + trainable adapter; its forward takes a `DistillationCollator` batch
and returns the distillation loss, so a stock `transformers.Trainer` can train it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapter import PacketAdapter
from ..layout import embed_student
from ..masks import model_attention_mask, positions_from_blocks
from ..model_structure import base_model, decoder


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_topk_ids: torch.Tensor | None = None,
    teacher_topk_logprobs: torch.Tensor | None = None,
    loss_type: str = "kl",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over answer positions (`labels != -100`) of KL(teacher || student), or cross-entropy on `labels`.

    `weights` (same shape as `labels`), when given, turns the mean into a weighted mean (0 excludes a position).

    `student_logits`: `(batch, answers, vocab)`. The teacher is given either as full log-probs of the same shape, or
    as its top-k (`ids`, `logprobs` of shape `(batch, answers, k)`; the KL is then summed over the top-k support).
    """
    valid = labels != -100
    logq = torch.log_softmax(student_logits.float(), dim=-1)
    if loss_type == "ce":
        per_pos = -logq.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    elif teacher_logprobs is not None:
        logp = teacher_logprobs.float()
        per_pos = (logp.exp() * (logp - logq)).sum(-1)
    elif teacher_topk_ids is not None:
        logp = teacher_topk_logprobs.float()
        per_pos = (logp.exp() * (logp - logq.gather(-1, teacher_topk_ids))).sum(-1)
    else:
        raise ValueError("distillation_loss needs teacher log-probs, teacher top-k, or loss_type='ce'.")
    w = valid.to(per_pos.dtype) if weights is None else weights.to(per_pos.dtype) * valid
    return (per_pos * w).sum() / w.sum().clamp_min(1e-8 if weights is not None else 1)


class PacketDistillationModel(nn.Module):
    """Wraps a frozen causal LM and a `PacketAdapter`; only the adapter has trainable parameters.

    `state_dict()` holds only the adapter, so Trainer checkpoints are a few hundred KB.
    """

    def __init__(self, model: nn.Module, adapter: PacketAdapter, loss_type: str = "kl"):
        super().__init__()
        if loss_type not in ("kl", "ce"):
            raise ValueError(f"loss_type must be 'kl' or 'ce', got {loss_type!r}.")
        self.model = model
        self.adapter = adapter
        self.loss_type = loss_type
        for p in self.model.parameters():
            p.requires_grad_(False)
        adapter.check_model(model)
        self.config = getattr(model, "config", None)

    # Trainer checkpoints: adapter only.
    def state_dict(self, *args: Any, **kwargs: Any):
        return self.adapter.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.adapter.load_state_dict(state_dict, strict=strict, assign=assign)

    def _answer_logits(self, embeds: torch.Tensor, attention_mask: Any, position_ids: torch.Tensor,
                       label_positions: torch.Tensor) -> torch.Tensor:
        base = base_model(self.model)
        hidden = decoder(base)(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False).last_hidden_state
        idx = label_positions.clamp_min(0)
        picked = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return base.get_output_embeddings()(picked)

    def student_logits(self, student_input_ids, student_slots, student_block_ids, student_label_positions):
        # a 0/0 adapter is the no-recompute baseline (its KL is the reference a run must beat)
        embeds = embed_student(self.model, self.adapter, student_input_ids, student_slots)
        mask = model_attention_mask(self.model, student_block_ids, dtype=embeds.dtype)
        return self._answer_logits(embeds, mask, positions_from_blocks(student_block_ids), student_label_positions)

    @torch.no_grad()
    def teacher_logprobs(self, teacher_input_ids, teacher_attention_mask, teacher_label_positions):
        embeds = self.model.get_input_embeddings()(teacher_input_ids)
        positions = (teacher_attention_mask.cumsum(-1) - 1).clamp_min(0)
        logits = self._answer_logits(embeds, teacher_attention_mask, positions, teacher_label_positions)
        return torch.log_softmax(logits.float(), dim=-1)

    def forward(self, student_input_ids, student_slots, student_block_ids, student_label_positions, labels,
                teacher_topk_ids=None, teacher_topk_logprobs=None, teacher_input_ids=None,
                teacher_attention_mask=None, teacher_label_positions=None, target_weights=None, answer_targets=None,
                **_: Any) -> dict[str, torch.Tensor]:
        logits = self.student_logits(student_input_ids, student_slots, student_block_ids, student_label_positions)
        teacher = None
        if self.loss_type == "kl" and teacher_topk_ids is None:
            teacher = self.teacher_logprobs(teacher_input_ids, teacher_attention_mask, teacher_label_positions)
        # Auxiliary (query) targets shape training; evaluation reports the answer loss alone, comparable across runs.
        weights = target_weights if self.training else answer_targets
        loss = distillation_loss(logits, labels, teacher, teacher_topk_ids, teacher_topk_logprobs, self.loss_type,
                                 weights)
        return {"loss": loss, "logits": logits}
