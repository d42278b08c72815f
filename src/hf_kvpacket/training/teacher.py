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


ROWS_FINGERPRINT = "rows_fingerprint.txt"  # beside the rows: a hash of their ids and the teacher's settings


def rows_fingerprint(teacher_dir: str) -> str | None:
    """The fingerprint of the teacher rows in `teacher_dir` (`None` where none were built)."""
    path = os.path.join(teacher_dir, ROWS_FINGERPRINT)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


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
    """Greedy answers for `prompts` and the teacher's top-k log-probs at the positions that predict each answer token,
    read from `generate`'s own logits: one prefill and one decode per row, no second forward over prompt + answer.

    With `cfg.query_targets` (and `query_lens`, the query's length per prompt), also the top-k at the positions
    inside the query that predict its tokens 2..Q (`query_topk_ids`, `query_topk_logprobs`), kept from the prefill.

    Rows run one at a time: on CPU a padded batch costs as much as its rows, and unpadded rows need no attention mask.
    `pad_id` is what `generate` pads finished rows with (unused with one row, kept for the caller's contract).
    """
    from transformers import DynamicCache

    from ..compat import cache_kwargs

    device = model.get_input_embeddings().weight.device
    results = []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt], device=device)
        n_query = max(query_lens[i] - 1, 0) if cfg.query_targets and query_lens is not None else 0
        # Prefill all but the last prompt token, keeping the logits of the query positions; generate() then runs the
        # last prompt token (whose logits predict the first answer token) and the decode steps over this cache.
        cache = DynamicCache(config=model.config)
        query_logits = None
        if len(prompt) > 1:
            out = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=max(n_query, 1), **cache_kwargs(cache))
            query_logits = out.logits[0, -n_query:].float() if n_query else None
        gen = model.generate(input_ids=ids, max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=pad_id,
                             output_logits=True, return_dict_in_generate=True, **cache_kwargs(cache))
        answer = gen.sequences[0, len(prompt):].tolist()
        for j, t in enumerate(answer):  # keep the first end-of-turn token
            if t in eos_ids:
                answer = answer[: j + 1]
                break
        answer_logits = torch.cat([step[:1].float() for step in gen.logits[: len(answer)]])  # >= 1 step
        top = torch.log_softmax(answer_logits, -1).topk(cfg.top_k, dim=-1)
        record = {"teacher_ids": answer, "teacher_topk_ids": top.indices.tolist(),
                  "teacher_topk_logprobs": top.values.tolist()}
        if cfg.query_targets:
            qtop = torch.log_softmax(query_logits, -1).topk(cfg.top_k, dim=-1) if query_logits is not None else None
            record.update(query_topk_ids=qtop.indices.tolist() if qtop is not None else [],
                          query_topk_logprobs=qtop.values.tolist() if qtop is not None else [])
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
    stored = rows_fingerprint(out_dir)
    if stored is None:
        with open(os.path.join(out_dir, ROWS_FINGERPRINT), "w") as f:
            f.write(fingerprint)
    elif stored != fingerprint:
        raise ValueError(f"{out_dir} holds teacher answers for other rows or settings; use another work dir.")
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
