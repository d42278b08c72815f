"""`AnswerCheck`: greedy answers of held-out rows at every evaluation of a training run, through the product path.

The validation KL is teacher-forced: it can fall while greedy answers get worse (a loss spread over many positions
can hide a first token that flips). So each evaluation also answers a few validation rows the way a user's
`generate()` does (`PacketStore` -> `PacketCache` -> `generate`, the `kv_packet` method of the evaluation) and
scores the answers against the teacher's own (fidelity to full recompute) and against the gold answers (F1).
The frozen model runs in float32 for the check (the dtype quality is measured in), whatever the student trains in.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch

from ..adapter import PacketAdapter


class AnswerCheck:
    """Score greedy KV Packet answers of teacher rows.

    Parameters
    ----------
    rows:
        Teacher rows (`preamble_ids`, `document_ids`, `query_ids`, `teacher_ids`, `answers`), e.g. the first
        validation rows of a run.
    tokenizer:
        The model's tokenizer (decodes the teacher's answers and the student's).
    max_new_tokens:
        Answer budget; the teacher's answers were made with the same.
    dtype:
        Dtype of the frozen model during the check (restored afterwards; bf16 -> fp32 -> bf16 is exact).

    Examples
    --------
    >>> check = AnswerCheck(val_rows.select(range(32)), tok)
    >>> check(model, adapter)                       # doctest: +SKIP
    {'answer_fidelity': 0.61, 'answer_f1': 0.44, 'first_token_agreement': 0.75}
    >>> check(model, None)                          # no adapter: plain packets (the no-recompute baseline)  # doctest: +SKIP
    """

    def __init__(self, rows: Any, tokenizer: Any, max_new_tokens: int = 24, dtype: torch.dtype = torch.float32):
        self.rows, self.tokenizer, self.max_new_tokens, self.dtype = rows, tokenizer, max_new_tokens, dtype

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, adapter: PacketAdapter | None) -> dict[str, float]:
        """`answer_fidelity` (token F1 to the teacher's answer), `answer_f1` (to the gold answers) and
        `first_token_agreement` (the first answer token equals the teacher's), each a mean over the rows."""
        from ..baselines import MethodContext, PromptParts, make_method
        from ..tasks.scoring import fidelity, token_f1

        original = next(model.parameters()).dtype
        was_training = model.training
        model.to(self.dtype).eval()
        # A detached copy: packets are encoded with the weights as they are now, and training's tensors stay untouched.
        frozen = copy.deepcopy(adapter).to(self.dtype) if adapter is not None else None
        try:
            ctx = MethodContext(model, self.tokenizer, adapter=frozen)
            method = make_method("kv_packet" if frozen is not None else "no_recompute")
            fid, f1, first = [], [], []
            for row in self.rows:
                parts = PromptParts(row["preamble_ids"], row["document_ids"], row["query_ids"])
                result = method.answer(ctx, parts, self.max_new_tokens)
                text = result.answer_text
                teacher = self.tokenizer.decode(row["teacher_ids"], skip_special_tokens=True).strip()
                fid.append(fidelity(text, teacher))
                f1.append(token_f1(text, list(row["answers"])))
                first.append(float(result.answer_ids[:1] == tuple(row["teacher_ids"][:1])))
        finally:
            model.to(original)
            model.train(was_training)
        return {"answer_fidelity": statistics.fmean(fid), "answer_f1": statistics.fmean(f1),
                "first_token_agreement": statistics.fmean(first)}
