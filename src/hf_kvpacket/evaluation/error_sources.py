"""Where a method's answers go wrong: the right document, another document, or none.

A stitched cache can fail in two different ways, and they call for different fixes. It can *confuse documents*
(answer from a distractor: the packets' keys no longer separate documents the way the joint prefill did) or it can
*misread the right one* (a different span of the gold document: the query's attention within the document shifted).
This module sorts every answer that disagrees with full recompute (fidelity below `agree`) by the document it was
taken from: the one whose tokens cover the largest share of the answer's (normalised) tokens.

Categories, per (task, method):

- ``agrees``: fidelity to the full-recompute answer ≥ `agree`;
- ``gold document``: taken from a document holding a gold answer (an other span, or the gold phrased wrongly);
- ``other document``: taken from a document holding no gold answer (document confusion);
- ``no document``: no document covers `cover` of its tokens (made up, or paraphrased beyond recognition).

Rows whose gold answer appears in no document (biography's composed answers, paraphrased golds) count as
``gold document`` only when the answer's document is the one the full-recompute answer came from.

Examples
--------
>>> rows = [{"id": "0", "task": "qa", "documents": ["Paris is in France.", "Rome is in Italy."],
...          "question": "Capital of France?", "answers": ["Paris"]}]
>>> records = [{"task": "qa", "id": "0", "method": "full_recompute", "answer": "Paris"},
...            {"task": "qa", "id": "0", "method": "no_recompute", "answer": "Rome"}]
>>> error_sources(records, rows)[("qa", "no_recompute")]["other document"]
1

From the command line, on any results folder (its rows are rebuilt from its `run_config.json`)::

    python -m hf_kvpacket.evaluation.error_sources results/qwen2.5-coder-0.5b-instruct-fp32-squad-n100
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..tasks.schema import normalize_answer
from ..tasks.scoring import fidelity
from .report import REFERENCE_METHOD, SAMPLES_FILE, ReportError, read_records

CATEGORIES = ("agrees", "gold document", "other document", "no document")


def answer_source(answer: str, documents: Sequence[str], cover: float = 0.6) -> int | None:
    """Index of the document covering the largest share of `answer`'s normalised tokens, or None under `cover`.

    >>> answer_source("the Eiffel tower", ["A bridge in Rome.", "The Eiffel Tower is in Paris."])
    1
    """
    return _source(answer, [set(normalize_answer(d).split()) for d in documents], cover)


def _source(answer: str, document_tokens: Sequence[set[str]], cover: float) -> int | None:
    # `answer_source` over documents already normalised (once per row, not once per answer)
    tokens = set(normalize_answer(answer).split())
    if not tokens or not document_tokens:
        return None
    shares = [len(tokens & d) / len(tokens) for d in document_tokens]
    best = max(range(len(document_tokens)), key=shares.__getitem__)
    return best if shares[best] >= cover else None


def gold_documents(row: dict[str, Any]) -> set[int]:
    """Documents whose normalised text contains a normalised gold answer (as whole tokens)."""
    golds = [f" {normalize_answer(g)} " for g in row["answers"] if normalize_answer(g)]
    return {i for i, d in enumerate(row["documents"]) if any(g in f" {normalize_answer(d)} " for g in golds)}


def _prepared(row: dict[str, Any]) -> tuple[list[set[str]], set[int]]:
    return [set(normalize_answer(d).split()) for d in row["documents"]], gold_documents(row)


def error_sources(records: Iterable[dict[str, Any]], rows: Iterable[dict[str, Any]], *,
                  reference: str = REFERENCE_METHOD, agree: float = 0.8,
                  cover: float = 0.6) -> dict[tuple[str, str], collections.Counter]:
    """(task, method) -> Counter over :data:`CATEGORIES` of the methods' answers against `reference`'s."""
    rows = {(r["task"], str(r["id"])): r for r in rows}
    records = [r for r in records if "error" not in r and (r["task"], str(r["id"])) in rows]
    prepared = {key: _prepared(row) for key, row in rows.items()}
    ref = {(r["task"], str(r["id"])): r["answer"] for r in records if r["method"] == reference}
    out: dict[tuple[str, str], collections.Counter] = {}
    for r in records:
        key = (r["task"], str(r["id"]))
        if r["method"] == reference or key not in ref:
            continue
        counts = out.setdefault((r["task"], r["method"]), collections.Counter({c: 0 for c in CATEGORIES}))
        if fidelity(r["answer"], ref[key]) >= agree:
            counts["agrees"] += 1
            continue
        document_tokens, golds = prepared[key]
        source = _source(r["answer"], document_tokens, cover)
        golds = golds or {_source(ref[key], document_tokens, cover)} - {None}
        if source is None:
            counts["no document"] += 1
        else:
            counts["gold document" if source in golds else "other document"] += 1
    return out


def error_sources_markdown(counts: dict[tuple[str, str], collections.Counter]) -> str:
    """A table: per (task, method) the share of answers in each category (counts in parentheses)."""
    lines = ["| task | method | n | " + " | ".join(CATEGORIES) + " |", "|---|---|---|" + "---|" * len(CATEGORIES)]
    for (task, method), c in sorted(counts.items()):
        n = sum(c.values())
        cells = [f"{c[k] / n:.0%} ({c[k]})" if n else "—" for k in CATEGORIES]
        lines.append(f"| {task} | {method} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_of_run(results_dir: str | Path) -> list[dict[str, Any]]:
    """Rebuild the rows a results folder answered, from its `run_config.json` (tasks, split, num_samples, seed)."""
    from ..tasks import load_task

    path = Path(results_dir) / "run_config.json"
    if not path.is_file():
        raise ReportError(f"{results_dir} has no run_config.json: error sources need the run's settings to rebuild "
                          f"its rows; rerun `kvpacket eval --output {results_dir}` (it writes one).")
    cfg = json.loads(path.read_text(encoding="utf-8"))["config"]
    return [dict(row) for task in cfg["tasks"]
            for row in load_task(task, split=cfg.get("split", "eval"), num_samples=cfg["num_samples"],
                                 seed=cfg["seed"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_kvpacket.evaluation.error_sources", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results folders written by `kvpacket eval`")
    parser.add_argument("--agree", type=float, default=0.8, help="fidelity at which an answer agrees (%(default)s)")
    parser.add_argument("--cover", type=float, default=0.6,
                        help="share of an answer's tokens a document must hold to be its source (%(default)s)")
    args = parser.parse_args(argv)
    from .runner import example_sha

    for folder in args.results:
        rows = rows_of_run(folder)
        shas = {(r["task"], str(r["id"])): example_sha(r) for r in rows}
        # only records of the rows as rebuilt: a record whose content hash differs answered other documents
        records = [r for r in read_records(Path(folder) / SAMPLES_FILE)
                   if shas.get((r["task"], str(r["id"]))) == r.get("example_sha")]
        print(f"## {folder}\n\n{error_sources_markdown(error_sources(records, rows, agree=args.agree, cover=args.cover))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CATEGORIES", "answer_source", "gold_documents", "error_sources", "error_sources_markdown", "rows_of_run"]
