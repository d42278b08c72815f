"""The no-adapter reference of a distillation run: the held-out KL of the stitched packets without soft tokens.

This is the "no recompute" student (documents encoded alone, stitched with contiguous positions, no header or
trailer), measured with the same collator, loss and validation rows as the adapter. An adapter's held-out KL means
little alone: the reference says how much of the gap to the teacher it closed.

Example
-------
>>> from hf_kvpacket.training.reference import no_adapter_kl
>>> no_adapter_kl(model, teacher_rows.select(range(40)), pad_token_id=tokenizer.pad_token_id)
0.2187
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..adapter import PacketAdapter
from .collator import DistillationCollator
from .model import PacketDistillationModel


@torch.no_grad()
def no_adapter_kl(model: nn.Module, rows: Sequence[dict[str, Any]], pad_token_id: int = 0, batch_size: int = 4,
                  loss_type: str = "kl") -> float:
    """Answer-token KL(teacher || student) of the no-adapter student over `rows` (teacher rows with top-k).

    Averaged like `Trainer.evaluate` averages `eval_loss` (mean of batch losses, weighted by rows per batch), so the
    figure is directly comparable with a run's validation curve.
    """
    wrapper = PacketDistillationModel(model, PacketAdapter.for_model(model, 0, 0), loss_type=loss_type).eval()
    collator = DistillationCollator(0, 0, pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {k: v for k, v in collator(chunk).items() if torch.is_tensor(v)}
        total += wrapper(**{k: v.to(device) for k, v in batch.items()})["loss"].item() * len(chunk)
        count += len(chunk)
    if count == 0:
        raise ValueError("no_adapter_kl needs at least one row.")
    return total / count


__all__ = ["no_adapter_kl"]
