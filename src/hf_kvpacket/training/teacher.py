"""Teacher answers: the frozen model reads the plain, jointly encoded prompt and answers greedily.

Rows are stored as a `datasets.Dataset` (saved in shards, so an interrupted run resumes where it stopped) with the
token ids of every prompt part, the teacher's answer ids and the teacher's top-k log-probabilities at each answer
position (so training needs no teacher forward).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..prompt import PromptTemplate


@dataclass
class TeacherConfig:
    """How teacher answers are produced."""

    max_new_tokens: int = 24
    top_k: int = 32
    max_context_tokens: int = 768
    shard_size: int = 8
    system_prompt: str | None = "You are a helpful assistant."
    # Also store the teacher's top-k at the positions that predict query tokens 2..Q: an auxiliary target that
    # costs no extra forward and gives several times more supervised positions per sample than the answer alone.
    query_targets: bool = False


def tokenize_example(
    tokenizer: Any, template: PromptTemplate, documents: Sequence[str], question: str, max_context_tokens: int | None
) -> dict[str, Any]:
    """Token ids of preamble, documents and query; trailing documents are dropped to fit `max_context_tokens`.

    Dropping documents is harmless for distillation: teacher and student always see the same documents.
    """
    parts = template.token_ids(tokenizer, documents, question)
    docs = parts["documents"]
    if max_context_tokens is not None:
        budget = max_context_tokens - len(parts["preamble"]) - len(parts["query"])
        kept, used = [], 0
        for d in docs:
            if used + len(d) > budget and kept:
                continue
            kept.append(d)
            used += len(d)
        docs = kept
    return {"preamble_ids": parts["preamble"], "document_ids": docs, "query_ids": parts["query"]}


@torch.no_grad()
def teacher_answers(model: Any, prompts: list[list[int]], cfg: TeacherConfig, eos_ids: set[int],
                    pad_id: int, query_lens: list[int] | None = None) -> list[dict[str, Any]]:
    """Greedy answers for a batch of prompts (left-padded), and top-k log-probs at the positions that predict each
    answer token (one forward per row over prompt + answer).

    With `cfg.query_targets` (and `query_lens`, the query's length per prompt), also the top-k at the positions
    inside the query that predict its tokens 2..Q (`query_topk_ids`, `query_topk_logprobs`)."""
    device = model.get_input_embeddings().weight.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=cfg.max_new_tokens,
                         do_sample=False, pad_token_id=pad_id)
    results = []
    for i, prompt in enumerate(prompts):
        answer = out[i, width:].tolist()
        for j, t in enumerate(answer):  # keep the first end-of-turn token, drop padding after it
            if t in eos_ids:
                answer = answer[: j + 1]
                break
        full = torch.tensor([prompt + answer], device=device)
        n_query = max(query_lens[i] - 1, 0) if cfg.query_targets and query_lens is not None else 0
        logits = model(input_ids=full, logits_to_keep=len(answer) + n_query + 1).logits[0, :-1].float()
        top = torch.log_softmax(logits, -1).topk(cfg.top_k, dim=-1)
        record = {"teacher_ids": answer, "teacher_topk_ids": top.indices[n_query:].tolist(),
                  "teacher_topk_logprobs": top.values[n_query:].tolist()}
        if cfg.query_targets:
            record.update(query_topk_ids=top.indices[:n_query].tolist(),
                          query_topk_logprobs=top.values[:n_query].tolist())
        results.append(record)
    return results


def build_teacher_dataset(
    model: Any,
    tokenizer: Any,
    rows: Any,
    out_dir: str,
    cfg: TeacherConfig | None = None,
    progress: bool = True,
):
    """Run the teacher over `rows` (a `datasets.Dataset` from `evaluation.load_task`), resumably, into `out_dir`.

    Returns the concatenated `datasets.Dataset` with columns: id, task, preamble_ids, document_ids, query_ids,
    teacher_ids, teacher_topk_ids, teacher_topk_logprobs, answers.
    """
    import datasets

    cfg = cfg or TeacherConfig()
    template = PromptTemplate.from_tokenizer(tokenizer, system_prompt=cfg.system_prompt)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    import hashlib
    import json

    os.makedirs(out_dir, exist_ok=True)
    # Shards are resumed by position: refuse a work dir made for other rows or another teacher configuration.
    settings = asdict(cfg)
    if not cfg.query_targets:  # work dirs made before the option existed keep their fingerprint
        settings.pop("query_targets")
    fingerprint = hashlib.sha256(json.dumps([list(rows["id"]), settings]).encode()).hexdigest()[:16]
    marker = os.path.join(out_dir, "rows_fingerprint.txt")
    if os.path.exists(marker):
        with open(marker) as f:
            if f.read().strip() != fingerprint:
                raise ValueError(f"{out_dir} holds teacher answers for other rows or settings; use another work dir.")
    else:
        with open(marker, "w") as f:
            f.write(fingerprint)
    with open(os.path.join(out_dir, "teacher_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
    n = len(rows)
    shards = []
    bar = tqdm(total=n, desc="teacher answers", disable=not progress)
    for start in range(0, n, cfg.shard_size):
        path = os.path.join(out_dir, f"shard-{start:06d}")
        if os.path.isdir(path):
            shards.append(datasets.load_from_disk(path))
            bar.update(len(shards[-1]))
            continue
        records = []
        for row in rows.select(range(start, min(n, start + cfg.shard_size))):
            tok = tokenize_example(tokenizer, template, row["documents"], row["question"], cfg.max_context_tokens)
            records.append({"id": row["id"], "task": row["task"], "answers": row["answers"], **tok})
        prompts = [r["preamble_ids"] + [t for d in r["document_ids"] for t in d] + r["query_ids"] for r in records]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        query_lens = [len(r["query_ids"]) for r in records]
        for r, answer in zip(records, teacher_answers(model, prompts, cfg, eos_ids, pad, query_lens)):
            r.update(answer)
        bar.update(len(records))
        shard = datasets.Dataset.from_list(records)
        shard.save_to_disk(path + ".tmp")
        os.replace(path + ".tmp", path)
        shards.append(shard)
    bar.close()
    return datasets.concatenate_datasets(shards) if shards else datasets.Dataset.from_list([])
