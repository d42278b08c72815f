"""Result tables and plots from per-sample records, and the `docs/results.md` page.

The runner (:mod:`hf_kvpacket.evaluation.runner`) writes one JSON line per (task, method, example). Everything here
is a pure function of those records, so a report can be rebuilt at any time (`kvpacket eval --report-only`):

* :func:`aggregate` -> per task x method: F1, exact match, fidelity to the full-recompute answer (PITFALLS #15),
  mean/median TTFT, mean FLOPs, recomputed tokens, number of samples; plus a macro mean over tasks.
* :func:`by_context_length` -> the same scores per context-length bucket (does an adapter transfer to longer prompts).
* :func:`by_document_count` -> the same per number of documents (does it close the gap where documents compete).
* :func:`markdown_tables` -> the tables as markdown.
* :func:`plot_f1_by_task` (grouped bars) and :func:`plot_f1_vs_ttft` (log-x scatter), matplotlib with the Agg canvas.
* :func:`write_report` -> `results.json`, `results.md` and the two PNGs in a results folder.
* :func:`render_docs` -> a `docs/results.md` page (tables, embedded plots copied under `docs/img/`, the exact command).

Examples
--------
>>> records = read_records("results/smollm2-smoke/samples.jsonl")
>>> summary = aggregate(records)
>>> summary["results"]["niah"]["kv_packet"]["f1"]
0.41
>>> print(markdown_tables(summary))
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import KVPacketError
from .intervals import bootstrap_mean_ci, gap_share
from .metrics import fidelity as fidelity_score
from .plots import MEAN, plot_f1_by_task, plot_f1_vs_ttft  # the figures live in plots.py

REFERENCE_METHOD = "full_recompute"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PLOT_F1 = "f1_by_task.png"
PLOT_TTFT = "f1_vs_ttft.png"

_METRICS = ("f1", "exact_match", "fidelity", "ttft_s", "ttft_median_s", "flops", "recomputed_tokens", "context_tokens",
            "n", "errors")


class ReportError(KVPacketError):
    """A results folder or records file is missing or unreadable."""


# ---------------------------------------------------------------------------------------------------------- records
def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a per-sample JSONL file (a truncated last line, from an interrupted run, is skipped).

    Examples
    --------
    >>> read_records("results/smollm2-smoke/samples.jsonl")[0]["method"]
    'full_recompute'
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"No per-sample records at {path}: run `kvpacket eval --output {path.parent}` first.")
    records = []
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # interrupted while writing the last line
                continue
            raise ReportError(f"{path}:{i + 1} is not valid JSON.") from None
    return records


def reference_answers(records: Iterable[dict[str, Any]], reference: str = REFERENCE_METHOD) -> dict[tuple[str, str], str]:
    """`(task, id) -> answer` of the `reference` method's successful records: what fidelity is measured against."""
    return {(r["task"], r["id"]): r["answer"] for r in records if r["method"] == reference and "error" not in r}


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ordered(names: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    names = list(dict.fromkeys(names))
    if not preferred:
        return names
    first = [n for n in preferred if n in names]
    return first + [n for n in names if n not in first]


def aggregate(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    reference: str = REFERENCE_METHOD,
) -> dict[str, Any]:
    """Per task x method scores and costs from per-sample records.

    Parameters
    ----------
    records:
        Dicts with at least `task, method, id, answer, f1, exact_match, ttft_s, flops`; a record with an `error`
        key counts in `errors` only.
    methods, tasks:
        Preferred order (others follow in order of appearance).
    reference:
        The method whose answers define fidelity (default the full recompute). Fidelity of a method on a task is
        averaged over the examples the reference answered; `None` when it did not run.

    Returns
    -------
    dict
        ``{"tasks": [...], "methods": [...], "results": {task: {method: {f1, exact_match, fidelity, ttft_s,
        ttft_median_s, flops, recomputed_tokens, context_tokens, n, errors}}}, "mean": {method: {...}}}`` where
        "mean" is the macro average over the tasks a method has results for (`tasks_covered` says how many).

    Examples
    --------
    >>> recs = [dict(task="t", method="full_recompute", id="1", answer="a", f1=1.0, exact_match=1.0, ttft_s=2.0,
    ...              flops=10.0), dict(task="t", method="x", id="1", answer="b", f1=0.0, exact_match=0.0, ttft_s=1.0,
    ...              flops=1.0)]
    >>> aggregate(recs)["results"]["t"]["x"]["fidelity"]
    0.0
    """
    latest: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for r in records:  # a resumed run may hold a failed and a later successful answer: keep the last success
        key = (r["task"], r["method"], str(r["id"]))
        if key not in latest or "error" in latest[key] or "error" not in r:
            latest[key] = r
    records = list(latest.values())
    task_names = _ordered((r["task"] for r in records), tasks)
    method_names = _ordered((r["method"] for r in records), methods)
    ref_answers = reference_answers(records, reference)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for task in task_names:
        results[task] = {}
        for method in method_names:
            rows = [r for r in records if r["task"] == task and r["method"] == method]
            if not rows:
                continue
            ok = [r for r in rows if "error" not in r]
            fids = [fidelity_score(r["answer"], ref_answers[(task, r["id"])]) for r in ok
                    if (task, r["id"]) in ref_answers]
            ttfts = [r["ttft_s"] for r in ok]
            results[task][method] = {
                "f1": _mean(r["f1"] for r in ok),
                "exact_match": _mean(r["exact_match"] for r in ok),
                "fidelity": _mean(fids),
                "ttft_s": _mean(ttfts),
                "ttft_median_s": statistics.median(ttfts) if ttfts else None,
                "flops": _mean(r["flops"] for r in ok),
                "recomputed_tokens": _mean(r.get("recomputed_tokens") for r in ok),
                "context_tokens": _mean(r.get("context_tokens") for r in ok),
                "n": len(ok),
                "errors": len(rows) - len(ok),
                "f1_ci": bootstrap_mean_ci([r["f1"] for r in ok]),
                "fidelity_ci": bootstrap_mean_ci(fids),
            }
        per_method = {m: {str(r["id"]): r["f1"] for r in records if r["task"] == task and r["method"] == m
                          and "error" not in r} for m in results[task]}
        for method in results[task]:
            if method not in (reference, "no_recompute"):
                results[task][method]["gap_won"] = gap_share(per_method, method, full=reference)
    mean: dict[str, dict[str, Any]] = {}
    for method in method_names:
        cells = [results[t][method] for t in task_names if method in results[t] and results[t][method]["n"]]
        if not cells:
            continue
        mean[method] = {key: _mean(c.get(key) for c in cells) for key in _METRICS if key not in ("n", "errors")}
        mean[method]["n"] = sum(c["n"] for c in cells)
        mean[method]["errors"] = sum(results[t][method]["errors"] for t in task_names if method in results[t])
        mean[method]["tasks_covered"] = len(cells)
    return {"tasks": task_names, "methods": method_names, "reference": reference, "results": results, "mean": mean,
            "by_context": by_context_length(records, method_names, reference),
            "by_documents": by_document_count(records, method_names, reference)}


CONTEXT_EDGES = (1024, 2048)
DOCUMENT_EDGES = (4, 6, 9)


def _bucket_labels(edges: Sequence[int]) -> list[str]:
    return [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def _by_bucket(records: Sequence[Mapping[str, Any]], methods: Sequence[str] | None, reference: str, key: str,
               edges: Sequence[int]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """F1 and fidelity per task, bucket of the reference record's `key` and method (see the two callers).

    Methods other than the reference and no recompute also get `gap_won` (see `gap_share`) over the bucket's rows.
    """
    ok = [r for r in records if "error" not in r]
    ref = {(r["task"], str(r["id"])): r for r in ok if r["method"] == reference}
    labels = _bucket_labels(edges)

    def bucket(r: Mapping[str, Any]) -> str | None:
        value = ref.get((r["task"], str(r["id"])), r).get(key)
        return None if value is None else labels[sum(value >= e for e in edges)]

    method_names = _ordered((r["method"] for r in ok), methods)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for task in _ordered((r["task"] for r in ok), None):
        cells: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
        for r in ok:
            if r["task"] == task and (b := bucket(r)) is not None:
                cells.setdefault(b, {}).setdefault(r["method"], []).append(r)
        out[task] = {}
        for b in (label for label in labels if label in cells):
            out[task][b] = {}
            for method in (m for m in method_names if m in cells[b]):
                rows = cells[b][method]
                fids = [fidelity_score(r["answer"], ref[(task, str(r["id"]))]["answer"]) for r in rows
                        if (task, str(r["id"])) in ref]
                out[task][b][method] = {"f1": _mean(r["f1"] for r in rows), "fidelity": _mean(fids), "n": len(rows)}
            # the gap share per bucket says where an adapter closes the gap, paired over the bucket's own rows
            per_method = {m: {str(r["id"]): r["f1"] for r in rows} for m, rows in cells[b].items()}
            for method, cell in out[task][b].items():
                if method not in (reference, "no_recompute"):
                    g = gap_share(per_method, method, full=reference)
                    if g is not None:
                        cell["gap_won"] = g
    return out


def by_context_length(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] | None = None,
    reference: str = REFERENCE_METHOD,
    edges: Sequence[int] = CONTEXT_EDGES,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """F1 and fidelity per task, context-length bucket and method.

    Adapters are trained at a context budget (768 tokens by default) and used on longer prompts; this shows whether
    they transfer. Tasks stay apart (pooling them would mix their difficulty into the length effect). An example's
    bucket is set by the reference method's context length (the same for every method; a method's own count would
    include adapter slots), or its own when the reference did not run.

    Returns ``{task: {bucket: {method: {"f1", "fidelity", "n"}}}}`` with buckets like ``"<1024"``, ``"1024-2047"``,
    ``">=2048"`` (only those that have examples, in order).
    """
    return _by_bucket(records, methods, reference, "context_tokens", edges)


def by_document_count(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] | None = None,
    reference: str = REFERENCE_METHOD,
    edges: Sequence[int] = DOCUMENT_EDGES,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """F1 and fidelity per task, bucket of documents per example and method.

    Stitching loses most where many independently encoded documents compete for one answer (which person's birth
    date?): this shows whether an adapter closes the gap there or only on the easy few-document rows. Buckets like
    ``"<4"``, ``"4-5"``, ``"6-8"``, ``">=9"``; records without ``num_documents`` are left out.

    >>> recs = [{"task": "t", "id": i, "method": m, "answer": "a", "f1": f, "num_documents": n}
    ...         for i, n in enumerate((2, 7)) for m, f in (("full_recompute", 1.0), ("kv_packet", n < 4))]
    >>> {b: c["kv_packet"]["f1"] for b, c in by_document_count(recs)["t"].items()}
    {'<4': 1.0, '6-8': 0.0}
    """
    return _by_bucket(records, methods, reference, "num_documents", edges)


# ---------------------------------------------------------------------------------------------------------- tables
def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "score":
        return f"{value:.3f}"
    if kind == "ms":
        return f"{value * 1e3:.1f}" if value < 10 else f"{value * 1e3:.0f}"
    if kind == "flops":
        return f"{value:.2e}"
    if kind == "x":
        return f"{value:.1f}×"
    return str(value)


def _fmt_ci(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _fmt_gap(g: Any) -> str:
    if not g or g.get("share") is None:
        return "—"
    if g.get("too_few"):
        return f"{g['share']:.0%}, n too small for an interval"
    ci = f" [{g['lo']:.0%}, {g['hi']:.0%}]" if g.get("lo") is not None else ""
    return f"{g['share']:.0%}{ci}"


def _bucket_cell(cell: Mapping[str, Any]) -> str:
    text = f"{_fmt(cell['f1'], 'score')} ({_fmt(cell['fidelity'], 'score')}"
    gap = cell.get("gap_won")
    return text + (f"; {_fmt_gap(gap)})" if gap and gap.get("share") is not None else ")")


def _table(summary: Mapping[str, Any], cell, header_suffix: str = "", with_mean: bool = True) -> list[str]:
    tasks = summary["tasks"]
    cols = tasks + ([MEAN] if with_mean and len(tasks) > 1 else [])
    lines = ["| method | " + " | ".join(f"{c}{header_suffix}" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for method in summary["methods"]:
        cells = []
        for c in cols:
            stats = summary["mean"].get(method) if c == MEAN else summary["results"][c].get(method)
            if c == MEAN and stats is not None and stats.get("tasks_covered", 0) < len(tasks):
                stats = None  # a mean over a subset of tasks would not be comparable
            cells.append(cell(stats, c, method) if stats else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown_tables(summary: Mapping[str, Any]) -> str:
    """Markdown tables: F1 (fidelity), exact match, TTFT with speed-up over the reference, FLOPs, recomputed tokens.

    Examples
    --------
    >>> print(markdown_tables(aggregate(read_records("results/x/samples.jsonl"))))  # doctest: +SKIP
    """
    ref = summary.get("reference", REFERENCE_METHOD)

    def speedup(stats, col, method):
        base = (summary["mean"] if col == MEAN else summary["results"][col]).get(ref)
        if not base or not base.get("ttft_s") or not stats.get("ttft_s"):
            return _fmt(stats.get("ttft_s"), "ms")
        return f"{_fmt(stats['ttft_s'], 'ms')} ({_fmt(base['ttft_s'] / stats['ttft_s'], 'x')})"

    n_per = sorted({s["n"] for t in summary["results"].values() for s in t.values()})
    errors = sum(s["errors"] for t in summary["results"].values() for s in t.values())
    out = [
        f"Samples per task × method: {', '.join(map(str, n_per))}" + (f"; {errors} failed samples excluded" if errors
                                                                        else "") + ".",
        "",
        f"**Token F1** (fidelity to the {ref} answer in parentheses; fractions, higher is better)",
        "",
        *_table(summary, lambda s, c, m: f"{_fmt(s['f1'], 'score')} ({_fmt(s['fidelity'], 'score')})"),
        "",
        "**Token F1 with its 95% bootstrap interval** (over examples)",
        "",
        *_table(summary, lambda s, c, m: _fmt(s["f1"], "score") + _fmt_ci(s.get("f1_ci")), with_mean=False),
        "",
        f"**Fidelity to the {ref} answer, 95% bootstrap interval**",
        "",
        *_table(summary, lambda s, c, m: _fmt(s["fidelity"], "score") + _fmt_ci(s.get("fidelity_ci")),
                with_mean=False),
        "",
        f"**Share of the no-recompute → {ref} F1 gap won back** (paired bootstrap 95% interval; — where a method "
        "is the reference, or the gap is under .02)",
        "",
        *_table(summary, lambda s, c, m: _fmt_gap(s.get("gap_won")), with_mean=False),
        "",
        "**Exact match**",
        "",
        *_table(summary, lambda s, c, m: _fmt(s["exact_match"], "score")),
        "",
        f"**Mean TTFT, ms** (speed-up over {ref}); from the start of cache preparation to the first token's logits",
        "",
        *_table(summary, speedup),
        "",
        "**Query-time FLOPs** (analytic, per answer up to the first token; see `hf_kvpacket.baselines.flops`)",
        "",
        *_table(summary, lambda s, c, m: _fmt(s["flops"], "flops")),
        "",
        "**Recomputed document tokens / context slots** (means)",
        "",
        *_table(summary, lambda s, c, m: f"{s['recomputed_tokens']:.0f} / {s['context_tokens']:.0f}"
                if s.get("context_tokens") is not None else "—", with_mean=False),
    ]
    for key, title, column in (("by_context", f"By context length** (prompt tokens of the {ref} input)", "context"),
                               ("by_documents", "By number of documents** per example", "documents")):
        buckets_by_task = summary.get(key) or {}
        if not any(len(buckets) > 1 for buckets in buckets_by_task.values()):
            continue
        methods = summary["methods"]
        out += ["", f"**{title}, per task: F1 (fidelity; share of the bucket's no-recompute → {ref} gap won back, "
                f"paired bootstrap 95% interval)", "",
                f"| task | {column} | n | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
        for task, buckets in buckets_by_task.items():
            for b, cells in buckets.items():
                n = max(c["n"] for c in cells.values())
                out.append(f"| {task} | {b} | {n} | " + " | ".join(_bucket_cell(cells[m]) if m in cells else "—"
                                                                 for m in methods) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------- files
def write_report(output: str | os.PathLike, meta: Mapping[str, Any] | None = None,
                 methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Aggregate `output/samples.jsonl` into `results.json`, `results.md`, `f1_by_task.png` and `f1_vs_ttft.png`.

    Parameters
    ----------
    output:
        The results folder written by the runner.
    meta:
        Run description stored under `"meta"` (model, adapter, command, ...); default: the `meta` of an existing
        `results.json` (or of `run_config.json`).
    methods, tasks:
        Preferred order of rows and columns.

    Returns
    -------
    dict
        The `results.json` content.

    Examples
    --------
    >>> write_report("results/smollm2-smoke")["mean"]["kv_packet"]["f1"]  # doctest: +SKIP
    """
    output = Path(output)
    if meta is None:
        for name in (RESULTS_FILE, "run_config.json"):
            if (output / name).is_file():
                meta = json.loads((output / name).read_text(encoding="utf-8")).get("meta")
                if meta:
                    break
    meta = dict(meta or {})
    methods = methods or meta.get("methods")
    tasks = tasks or meta.get("tasks")
    summary = aggregate(read_records(output / SAMPLES_FILE), methods=methods, tasks=tasks)
    summary = {"meta": meta, **summary}
    (output / RESULTS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    model = meta.get("model", "")
    plot_f1_by_task(summary, output / PLOT_F1, title=f"Token F1 per task — {model}" if model else None)
    plot_f1_vs_ttft(summary, output / PLOT_TTFT, title=f"F1 vs TTFT — {model}" if model else None)
    header = [f"# Evaluation results{f' — {model}' if model else ''}", ""]
    if meta.get("command"):
        header += ["Produced by:", "", "```bash", meta["command"], "```", ""]
    header += [_meta_line(meta), ""] if meta else []
    body = markdown_tables(summary)
    plots = f"\n![F1 per task]({PLOT_F1})\n\n![F1 vs TTFT]({PLOT_TTFT})\n"
    (output / TABLE_FILE).write_text("\n".join(header) + body + plots, encoding="utf-8")
    return summary


def _meta_line(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("model", "model"), ("adapter", "adapter"), ("num_samples", "samples/task"), ("seed", "seed"),
                       ("max_new_tokens", "max new tokens"), ("dtype", "dtype"), ("device", "device"),
                       ("torch_threads", "torch threads"), ("transformers_version", "transformers"),
                       ("torch_version", "torch"), ("date", "date")):
        if meta.get(key) not in (None, ""):
            parts.append(f"{label}: `{meta[key]}`")
    return "; ".join(parts) + "." if parts else ""


def __getattr__(name: str) -> Any:
    """`render_docs` and `per_task_adapter_table` moved to pages.py; still importable from here."""
    if name in ("render_docs", "per_task_adapter_table"):
        from . import pages

        return getattr(pages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "REFERENCE_METHOD",
    "reference_answers",
    "SAMPLES_FILE",
    "RESULTS_FILE",
    "TABLE_FILE",
    "PLOT_F1",
    "PLOT_TTFT",
    "ReportError",
    "read_records",
    "by_context_length",
    "by_document_count",
    "aggregate",
    "markdown_tables",
    "plot_f1_by_task",
    "plot_f1_vs_ttft",
    "write_report",
    "render_docs",
]
