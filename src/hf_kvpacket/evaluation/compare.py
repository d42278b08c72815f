"""`kvpacket compare`: paired differences between two evaluation runs on the same rows.

Two adapters (or an adapter and a baseline) are compared on the examples both runs answered, paired by example id,
with a percentile-bootstrap interval of the mean difference. Pairing removes the spread between examples, so it can
tell two methods apart where their per-cell intervals overlap (PITFALLS: never read "better" off two overlapping
means). Rows are matched by `id` *and* `example_sha`, so runs whose rows differ (another seed, another task version)
are refused instead of being compared on different questions.

Examples
--------
>>> a = [{"task": "t", "method": "kv_packet", "id": str(i), "f1": 1.0, "example_sha": "s"} for i in range(3)]
>>> b = [{"task": "t", "method": "kv_packet", "id": str(i), "f1": 0.5, "example_sha": "s"} for i in range(3)]
>>> compare_records(a, b)[0]["diff"]
0.5
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from .intervals import paired_difference
from .metrics import fidelity as fidelity_score
from .report import REFERENCE_METHOD, SAMPLES_FILE, ReportError, read_records, reference_answers


def _scores(records: Iterable[dict[str, Any]], method: str, metric: str,
            reference: dict[tuple[str, str], str] | None = None) -> dict[str, dict[str, tuple[str | None, float]]]:
    """task -> example id -> (example_sha, score) of one method (fidelity against `reference`'s answers)."""
    out: dict[str, dict[str, tuple[str | None, float]]] = {}
    for r in records:
        if r.get("method") != method or r.get("error"):
            continue
        if metric == "fidelity":
            ref = (reference or {}).get((r["task"], r["id"]))
            if ref is None:
                continue
            value = fidelity_score(r["answer"], ref)
        else:
            value = r.get(metric)
        if value is None:
            continue
        out.setdefault(r["task"], {})[r["id"]] = (r.get("example_sha"), float(value))
    return out


def _reference(records: Sequence[dict[str, Any]], method: str, runs: Sequence[Sequence[dict[str, Any]]]
               ) -> dict[tuple[str, str], str]:
    """`reference_answers` of `method` in `records`, refused where an example id holds another row in `runs`."""
    shas = {(r["task"], r["id"]): r.get("example_sha") for r in records if r.get("method") == method}
    for run in runs:
        for r in run:
            sha = shas.get((r["task"], r["id"]))
            if sha and r.get("example_sha") and sha != r["example_sha"]:
                raise ReportError(f"Example {r['id']!r} of task {r['task']!r} holds another row in the reference run "
                                  "(example_sha differs): pick a reference made with the same --seed and "
                                  "--num-samples.")
    answers = reference_answers(records, method)
    if not answers:
        raise ReportError(f"The reference run has no answers of method {method!r}; name one it has (`DIR:method`).")
    return answers


def compare_records(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], method_a: str = "kv_packet",
                    method_b: str | None = None, metric: str = "f1", seed: int = 0,
                    reference: Sequence[dict[str, Any]] | None = None,
                    reference_method: str = REFERENCE_METHOD) -> list[dict[str, Any]]:
    """Per task: mean `metric` of `method_a` in records `a` and of `method_b` (default the same) in `b`, on the
    examples both answered, and the paired mean difference a - b with its 95% bootstrap interval.

    `metric` is a per-sample field (`f1`, `exact_match`, `ttft_s`, ...) or `fidelity` (agreement with the
    full-recompute answer of the same run, or with `reference_method`'s answers in the records `reference`: e.g.
    how far full recompute in bf16 moves from full recompute in fp32, the floor any inexact method stands on).
    Raises :class:`ReportError` when no task has examples in common or an example id carries different rows in the
    runs.

    >>> row = lambda m, i, a: {"task": "t", "method": m, "id": i, "answer": a, "example_sha": i}
    >>> fp32 = [row("full_recompute", "0", "London"), row("full_recompute", "1", "1815"),
    ...         row("kv_packet", "0", "London"), row("kv_packet", "1", "Paris")]
    >>> bf16 = [row("full_recompute", "0", "London"), row("full_recompute", "1", "1815")]
    >>> r = compare_records(bf16, fp32, "full_recompute", "kv_packet", "fidelity", reference=fp32)[0]
    >>> r["a"], r["b"]  # bf16 full recompute agrees with fp32 on both rows, KV Packet on one
    (1.0, 0.5)
    """
    method_b = method_b or method_a
    if reference is not None and metric == "fidelity":
        ref_a = ref_b = _reference(reference, reference_method, (a, b))
    elif metric == "fidelity":
        ref_a, ref_b = reference_answers(a, reference_method), reference_answers(b, reference_method)
    else:
        ref_a = ref_b = None
    sa = _scores(a, method_a, metric, ref_a)
    sb = _scores(b, method_b, metric, ref_b)
    rows = []
    for task in sorted(set(sa) & set(sb)):
        ids = sorted(set(sa[task]) & set(sb[task]))
        differ = [i for i in ids if sa[task][i][0] and sb[task][i][0] and sa[task][i][0] != sb[task][i][0]]
        if differ:
            raise ReportError(f"{len(differ)} examples of task {task!r} (e.g. {differ[0]}) hold different rows in the "
                              "two runs (example_sha differs): they were built with other seeds or task versions. "
                              "Compare runs made with the same --seed and --num-samples.")
        if len(ids) < 2:
            continue
        x, y = [sa[task][i][1] for i in ids], [sb[task][i][1] for i in ids]
        ci = paired_difference(x, y, seed=seed)
        mean_a, mean_b = sum(x) / len(x), sum(y) / len(y)
        rows.append({"task": task, "n": len(ids), "a": mean_a, "b": mean_b, "diff": mean_a - mean_b,
                     "lo": ci[0] if ci else None, "hi": ci[1] if ci else None})
    if not rows:
        raise ReportError(f"No task has two or more examples answered by both {method_a!r} (first run) and "
                          f"{method_b!r} (second run); check the method names (`DIR:method`) and that both runs used "
                          "the same tasks.")
    return rows


def _split_spec(spec: str) -> tuple[str, str | None]:
    """`DIR` or `DIR:method`."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and os.sep not in tail and not os.path.isdir(spec):
        return head, tail
    return spec, None


def compare_runs(a: str, b: str, metric: str = "f1", default_method: str = "kv_packet",
                 reference: str | None = None) -> list[dict[str, Any]]:
    """:func:`compare_records` of two results folders, each given as `DIR` or `DIR:method` (default `kv_packet`);
    `reference` (`DIR` or `DIR:method`, default method `full_recompute`) is the run fidelity is measured against.

    >>> compare_runs("results/v2", "results/v1:cacheblend")  # doctest: +SKIP
    >>> compare_runs("runs/bf16:full_recompute", "results/fp32", "fidelity", reference="results/fp32")  # doctest: +SKIP
    """
    (dir_a, method_a), (dir_b, method_b) = _split_spec(a), _split_spec(b)
    ref_dir, ref_method = _split_spec(reference) if reference is not None else (None, None)
    return compare_records(read_records(os.path.join(dir_a, SAMPLES_FILE)),
                           read_records(os.path.join(dir_b, SAMPLES_FILE)),
                           method_a or default_method, method_b or method_a or default_method, metric,
                           reference=read_records(os.path.join(ref_dir, SAMPLES_FILE)) if ref_dir else None,
                           reference_method=ref_method or REFERENCE_METHOD)


def markdown(rows: Sequence[dict[str, Any]], a: str, b: str, metric: str = "f1") -> str:
    """The comparison as a markdown table (one row per task)."""
    lines = [f"| task | n | {metric}: {a} | {metric}: {b} | paired difference [95% CI] |", "|---|---:|---:|---:|---|"]
    for r in rows:
        ci = f" [{r['lo']:+.3f}, {r['hi']:+.3f}]" if r["lo"] is not None else ""
        lines.append(f"| {r['task']} | {r['n']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f}{ci} |")
    return "\n".join(lines)


__all__ = ["compare_records", "compare_runs", "markdown"]
