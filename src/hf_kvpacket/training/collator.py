"""`DistillationCollator`: rows {documents, question, teacher answer} -> student and teacher batches.

Pure data (token ids and index tensors), usable as `data_collator=` of a stock `transformers.Trainer`. The adapter's
soft tokens are inserted by the model wrapper (`PacketDistillationModel`) at the slots marked here, since they are
parameters, not data.

Student sequence per row: `[preamble | H doc1 T | ... | H docN T | query | answer[:-1]]` with block ids (each wrapped
document its own block, query and answer joint), contiguous positions, right padding. `student_slots` is -1 for real
tokens, `0..h-1` for header slots and `h..h+t-1` for trailer slots. `student_label_positions` lists, per row, the
positions whose next-token distribution predicts each answer token (padded with -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..layout import student_layout
from ..masks import PAD


@dataclass
class DistillationCollator:
    """Collate teacher rows for distillation.

    Parameters
    ----------
    num_header_tokens, num_trailer_tokens:
        Adapter slots around every document (must match the adapter).
    pad_token_id:
        Token id used in padded slots (never attended to).
    with_teacher_inputs:
        Also build the teacher's joint sequence (for an on-the-fly teacher); with precomputed top-k log-probs in the
        rows it is not needed.
    query_weight:
        Weight of the auxiliary query targets (rows from a teacher run with `TeacherConfig(query_targets=True)`):
        the positions inside the query that predict its tokens 2..Q are supervised too, before the answer targets,
        each with this weight (answer targets weigh 1). `answer_targets` marks the answer targets, so evaluation can
        keep measuring the answer KL alone. 0 (default): answer targets only.

    Example
    -------
    >>> collator = DistillationCollator(num_header_tokens=8, num_trailer_tokens=8)
    >>> trainer = transformers.Trainer(model=PacketDistillationModel(model, adapter), data_collator=collator,
    ...                                train_dataset=teacher_rows, args=TrainingArguments(..., remove_unused_columns=False))
    """

    num_header_tokens: int = 8
    num_trailer_tokens: int = 8
    pad_token_id: int = 0
    with_teacher_inputs: bool = False
    query_weight: float = 0.0

    def student_row(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int]]:
        answer = list(row["teacher_ids"])
        tail = list(row["query_ids"]) + answer[:-1]
        ids, slots, blocks = student_layout(row["preamble_ids"], row["document_ids"], tail, self.num_header_tokens,
                                            self.num_trailer_tokens, self.pad_token_id)
        query_start = len(ids) - len(tail)
        first = query_start + len(row["query_ids"]) - 1  # the last query token predicts the first answer token
        positions = list(range(first, first + len(answer)))
        if self.query_weight > 0:  # query token i predicts query token i + 1
            positions = list(range(query_start, query_start + len(row["query_topk_ids"]))) + positions
        return ids, slots, blocks, positions

    def _targets(self, row: dict[str, Any]) -> tuple[list[int], list[list[int]] | None, list[list[float]] | None]:
        """Target token ids and the teacher's top-k for them: [query tokens 2..Q (optional)] + answer."""
        labels = list(row["teacher_ids"])
        ids, lps = row.get("teacher_topk_ids"), row.get("teacher_topk_logprobs")
        if self.query_weight > 0:
            if "query_topk_ids" not in row or "teacher_topk_ids" not in row:
                raise ValueError("query_weight > 0 needs teacher rows with precomputed top-k and query targets: build "
                                 "them with TeacherConfig(query_targets=True) (kvpacket train --query-weight W does).")
            n = len(row["query_topk_ids"])
            labels = list(row["query_ids"][1: n + 1]) + labels
            ids, lps = list(row["query_topk_ids"]) + list(ids), list(row["query_topk_logprobs"]) + list(lps)
        return labels, ids, lps

    def teacher_row(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        ids = list(row["preamble_ids"]) + [x for d in row["document_ids"] for x in d] + list(row["query_ids"])
        first = len(ids) - 1
        answer = list(row["teacher_ids"])
        return ids + answer[:-1], list(range(first, first + len(answer)))

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        targets = [self._targets(r) for r in rows]  # first: names a missing query-target column
        students = [self.student_row(r) for r in rows]
        width = max(len(s[0]) for s in students)
        n_ans = max(len(t[0]) for t in targets)
        b = len(rows)
        batch = {
            "student_input_ids": torch.full((b, width), self.pad_token_id, dtype=torch.long),
            "student_slots": torch.full((b, width), -1, dtype=torch.long),
            "student_block_ids": torch.full((b, width), PAD, dtype=torch.long),
            "student_label_positions": torch.full((b, n_ans), -1, dtype=torch.long),
            "labels": torch.full((b, n_ans), -100, dtype=torch.long),
        }
        if self.query_weight > 0:
            batch["target_weights"] = torch.zeros(b, n_ans)
            batch["answer_targets"] = torch.zeros(b, n_ans, dtype=torch.bool)
        for i, ((ids, slots, blocks, pos), row, (labels, _, _)) in enumerate(zip(students, rows, targets)):
            n = len(ids)
            batch["student_input_ids"][i, :n] = torch.tensor(ids)
            batch["student_slots"][i, :n] = torch.tensor(slots)
            batch["student_block_ids"][i, :n] = torch.tensor(blocks)
            batch["student_label_positions"][i, : len(pos)] = torch.tensor(pos)
            batch["labels"][i, : len(pos)] = torch.tensor(labels)
            if self.query_weight > 0:
                n_q = len(labels) - len(row["teacher_ids"])
                batch["target_weights"][i, :n_q] = self.query_weight
                batch["target_weights"][i, n_q: len(labels)] = 1.0
                batch["answer_targets"][i, n_q: len(labels)] = True
        if "teacher_topk_ids" in rows[0]:
            k = len(rows[0]["teacher_topk_ids"][0])
            batch["teacher_topk_ids"] = torch.zeros(b, n_ans, k, dtype=torch.long)
            batch["teacher_topk_logprobs"] = torch.full((b, n_ans, k), -1e4, dtype=torch.float32)
            for i, (_, top_ids, top_lps) in enumerate(targets):
                a = len(top_ids)
                batch["teacher_topk_ids"][i, :a] = torch.tensor(top_ids)
                batch["teacher_topk_logprobs"][i, :a] = torch.tensor(top_lps)
        if self.with_teacher_inputs or "teacher_topk_ids" not in rows[0]:
            teachers = [self.teacher_row(r) for r in rows]
            tw = max(len(t[0]) for t in teachers)
            batch["teacher_input_ids"] = torch.full((b, tw), self.pad_token_id, dtype=torch.long)
            batch["teacher_attention_mask"] = torch.zeros(b, tw, dtype=torch.long)
            batch["teacher_label_positions"] = torch.full((b, n_ans), -1, dtype=torch.long)
            for i, (ids, pos) in enumerate(teachers):
                batch["teacher_input_ids"][i, : len(ids)] = torch.tensor(ids)
                batch["teacher_attention_mask"][i, : len(ids)] = 1
                batch["teacher_label_positions"][i, : len(pos)] = torch.tensor(pos)
        return batch
