"""`PacketDistillationTrainer`: a `transformers.Trainer` that saves and resumes only the adapter."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from transformers import Trainer

from ..config import WEIGHTS_NAME


class PacketDistillationTrainer(Trainer):
    """Trainer for `PacketDistillationModel` + `DistillationCollator`.

    Checkpoints hold the adapter artifact (`adapter_config.json`, `adapter_model.safetensors`) plus the optimizer,
    scheduler, RNG and data-order state Trainer saves, so `train(resume_from_checkpoint=True)` resumes exactly.
    Runs unchanged under `accelerate launch` (DDP): only the adapter's parameters have gradients.

    `answer_check` (an :class:`~hf_kvpacket.training.AnswerCheck`) adds greedy-answer metrics to every evaluation
    (`eval_answer_fidelity`, `eval_answer_f1`, `eval_first_token_agreement`), logged beside `eval_loss`; they can be
    the checkpoint-selection metric (`metric_for_best_model="eval_answer_fidelity"`, `greater_is_better=True`).

    A validation set of several tasks (a mixture) is evaluated per task: `eval_<task>_loss` beside the row-weighted
    `eval_loss`, and, given `task_references` (each task's no-adapter KL), `eval_<task>_gain` and
    `eval_worst_task_gain`, a selection metric that a gain on one task cannot buy with a loss on another.

    Every log entry also carries `wall_hours`: hours this run has trained and evaluated, summed over resumed
    sessions (with `--threads 1`, core-hours), so learning curves can be drawn against compute as well as samples.
    """

    def __init__(self, *args: Any, answer_check: Any = None, task_references: dict[str, float] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_check = answer_check
        self.task_references = task_references
        self._clock_start = time.time()
        self._hours_before: float | None = None

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._clock_start, self._hours_before = time.time(), None
        return super().train(*args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._hours_before is None:  # first log of this process: a resumed run's history is loaded by now
            self._hours_before = max((h.get("wall_hours", 0.0) for h in self.state.log_history), default=0.0)
        logs = {**logs, "wall_hours": round(self._hours_before + (time.time() - self._clock_start) / 3600, 4)}
        super().log(logs, *args, **kwargs)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        # An on-policy collator trains on the student's answers; validation stays on the teacher's (comparable KL).
        collator = self.data_collator
        self.data_collator = getattr(collator, "eval_collator", collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        tasks = task_rows(dataset)
        if len(tasks) > 1:
            metrics = self._evaluate_per_task(dataset, tasks, ignore_keys, metric_key_prefix)
        else:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.answer_check is not None:
            model = self.accelerator.unwrap_model(self.model)
            extra = {f"{metric_key_prefix}_{k}": round(v, 4) for k, v in self.answer_check(model.model, model.adapter).items()}
            self.log(extra)
            metrics.update(extra)  # the dict Trainer picks the best checkpoint from
        return metrics

    def _evaluate_per_task(self, dataset: Any, tasks: dict[str, list[int]], ignore_keys: list[str] | None,
                           prefix: str) -> dict[str, float]:
        """One evaluation per task of a mixed validation set: `eval_<task>_loss` for each, `eval_loss` their
        row-weighted mean, and with `task_references` (the no-adapter KL per task) `eval_<task>_gain` (share of the
        no-adapter KL closed) and `eval_worst_task_gain`. A mixture's mean KL can improve while one task gets worse
        (it did: session 21); the worst task's gain cannot."""
        combined: dict[str, float] = {}
        total = 0.0
        for task, rows in tasks.items():
            loss = super().evaluate(dataset.select(rows), ignore_keys, f"{prefix}_{task}")[f"{prefix}_{task}_loss"]
            combined[f"{prefix}_{task}_loss"] = loss
            total += loss * len(rows)
        combined[f"{prefix}_loss"] = total / sum(len(rows) for rows in tasks.values())
        if self.task_references:
            gains = {t: 1.0 - combined[f"{prefix}_{t}_loss"] / self.task_references[t]
                     for t in tasks if self.task_references.get(t)}
            combined.update({f"{prefix}_{t}_gain": round(g, 4) for t, g in gains.items()})
            if gains:
                combined[f"{prefix}_worst_task_gain"] = round(min(gains.values()), 4)
        self.log(combined)
        return combined

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


def task_rows(dataset: Any) -> dict[str, list[int]]:
    """Row indices of each task in a teacher dataset (`{}` without a `task` column), in first-seen order."""
    if dataset is None or "task" not in getattr(dataset, "column_names", []):
        return {}
    rows: dict[str, list[int]] = {}
    for i, task in enumerate(dataset["task"]):
        rows.setdefault(task, []).append(i)
    return rows
