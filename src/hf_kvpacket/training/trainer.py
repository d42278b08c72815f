"""`PacketDistillationTrainer`: a `transformers.Trainer` that saves and resumes only the adapter."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer

from ..config import WEIGHTS_NAME


class PacketDistillationTrainer(Trainer):
    """Trainer for `PacketDistillationModel` + `DistillationCollator`.

    Checkpoints hold the adapter artifact (`adapter_config.json`, `adapter_model.safetensors`) plus the optimizer,
    scheduler, RNG and data-order state Trainer saves, so `train(resume_from_checkpoint=True)` resumes exactly.
    Runs unchanged under `accelerate launch` (DDP): only the adapter's parameters have gradients.
    """

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        model.adapter.save_pretrained(output_dir, model_card=False)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        model = model or self.model
        state = load_file(os.path.join(resume_from_checkpoint, WEIGHTS_NAME))
        model.adapter.load_state_dict(state)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best and os.path.isfile(os.path.join(best, WEIGHTS_NAME)):
            self._load_from_checkpoint(best)
