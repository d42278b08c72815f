"""On-policy distillation: the student learns the teacher's predictions along its *own* greedy answers.

Distilling on the teacher's answers only (teacher forcing) trains the adapter on prefixes it never produces at
generation time: once its greedy answer leaves the teacher's, nothing taught it how to continue. Runs showed exactly
that: validation KL fell by a third while greedy answers stayed where they were (`results/notes.md`, SmolLM2 s2).
Generalized knowledge distillation (Agarwal et al., ICLR 2024, "On-Policy Distillation of Language Models") fixes it
by scoring the student's own outputs with the teacher. Here, for a chosen share of the training rows:

1. the student answers greedily through the product path (`PacketStore` -> `PacketCache` -> `generate`, the
   `kv_packet` method, with a detached copy of the adapter as it is at this step);
2. the frozen model reading the jointly encoded prompt (the teacher) scores that answer in one forward: its top-k
   log-probs at every position that predicts an answer token;
3. the row's answer and top-k are replaced by these before the ordinary collator builds the batch, so the student
   model, the loss and the query targets are unchanged.

Which rows go on-policy is a fixed function of the row id (`fraction`), so a resumed run makes the same choice; the
answers themselves follow the adapter restored from the checkpoint. Validation keeps the teacher's own answers
(`eval_collator`), so the validation KL stays comparable with every earlier run.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


def on_policy_row(row_id: str, fraction: float) -> bool:
    """Whether the row with this id is answered by the student (a stable hash of the id against `fraction`)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(str(row_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@torch.no_grad()
def teacher_topk_on(model: torch.nn.Module, prompt: Sequence[int], answer: Sequence[int], top_k: int
                    ) -> tuple[list[list[int]], list[list[float]]]:
    """The frozen model's top-k log-probs at the positions of `prompt + answer` that predict each answer token."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([list(prompt) + list(answer[:-1])], device=device)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer)).logits[0].float()
    top = torch.log_softmax(logits, -1).topk(top_k, dim=-1)
    return top.indices.tolist(), top.values.tolist()


@dataclass
class OnPolicyCollator:
    """Wraps a :class:`~hf_kvpacket.training.DistillationCollator`: a share of each batch's rows get the student's
    own greedy answer, scored by the teacher, as their targets (see the module docstring).

    Parameters
    ----------
    collator:
        The collator that builds the batch (and the validation batches, unchanged: `eval_collator`).
    model:
        The frozen base model (the same object the student trains through).
    adapter:
        The adapter being trained (read at every call; answers use a detached copy of it).
    tokenizer:
        The model's tokenizer.
    fraction:
        Share of training rows answered by the student, chosen by row id (1.0: all of them).
    max_new_tokens:
        The student's answer budget (the teacher answers had the same).
    dtype:
        Dtype of the frozen model while answering and scoring (restored afterwards): float32 by default, the dtype
        the teacher rows and the evaluation use, whatever the student trains in.

    Example
    -------
    >>> collator = OnPolicyCollator(DistillationCollator(16, 16), model, adapter, tok, fraction=0.5)
    >>> trainer = PacketDistillationTrainer(..., data_collator=collator)   # evaluates with collator.eval_collator
    """

    collator: Any
    model: torch.nn.Module
    adapter: Any
    tokenizer: Any
    fraction: float = 1.0
    max_new_tokens: int = 24
    dtype: torch.dtype = torch.float32
    stats: dict[str, int] = field(default_factory=lambda: {"rows": 0, "on_policy": 0, "same_as_teacher": 0})

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"on-policy fraction must be in (0, 1], got {self.fraction}.")
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    @property
    def eval_collator(self) -> Any:
        """Validation batches: the teacher's own answers (the validation KL stays comparable across runs)."""
        return self.collator

    def _answer(self, ctx: Any, method: Any, row: dict[str, Any]) -> list[int]:
        from ..baselines import PromptParts

        parts = PromptParts(row["preamble_ids"], row["document_ids"], row["query_ids"])
        answer = list(method.answer(ctx, parts, self.max_new_tokens).answer_ids)
        for j, t in enumerate(answer):  # keep the first end-of-turn token, as the teacher rows do
            if t in self._eos:
                return answer[: j + 1]
        return answer

    def rewrite(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` with the chosen ones' `teacher_ids` / `teacher_topk_*` replaced by the student's answer and the
        teacher's top-k along it."""
        chosen = [on_policy_row(r["id"], self.fraction) for r in rows]
        self.stats["rows"] += len(rows)
        if not any(chosen):
            return list(rows)
        from ..baselines import MethodContext, make_method

        model = self.model
        original, was_training = next(model.parameters()).dtype, model.training
        model.to(self.dtype).eval()
        try:
            ctx = MethodContext(model, self.tokenizer, adapter=copy.deepcopy(self.adapter).to(self.dtype).eval())
            method = make_method("kv_packet")
            out = []
            for row, pick in zip(rows, chosen):
                if not pick:
                    out.append(row)
                    continue
                answer = self._answer(ctx, method, row)
                prompt = list(row["preamble_ids"]) + [t for d in row["document_ids"] for t in d] + list(row["query_ids"])
                k = len(row["teacher_topk_ids"][0])
                ids, lps = teacher_topk_on(model, prompt, answer, k)
                self.stats["on_policy"] += 1
                self.stats["same_as_teacher"] += int(answer == list(row["teacher_ids"]))
                out.append({**row, "teacher_ids": answer, "teacher_topk_ids": ids, "teacher_topk_logprobs": lps})
        finally:
            model.to(original)
            model.train(was_training)
        return out

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collator(self.rewrite(rows))
