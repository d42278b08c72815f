"""Result tables and plots from per-sample records, and the `docs/results.md` page.

The runner (:mod:`hf_kvpacket.evaluation.runner`) writes one JSON line per (task, method, example). Everything here
is a pure function of those records, so a report can be rebuilt at any time (`kvpacket eval --report-only`):

* :func:`aggregate` -> per task x method: F1, exact match, fidelity to the full-recompute answer (PITFALLS #15),
  mean/median TTFT, mean FLOPs, recomputed tokens, number of samples; plus a macro mean over tasks.
* :func:`by_context_length` -> the same scores per context-length bucket (does an adapter transfer to longer prompts).
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
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import KVPacketError
from .intervals import bootstrap_mean_ci, gap_share
from .metrics import fidelity as fidelity_score

REFERENCE_METHOD = "full_recompute"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PLOT_F1 = "f1_by_task.png"
PLOT_TTFT = "f1_vs_ttft.png"
MEAN = "mean"

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
    ref_answers = {(r["task"], r["id"]): r["answer"] for r in records if r["method"] == reference and "error" not in r}
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
            "by_context": by_context_length(records, method_names, reference)}


CONTEXT_EDGES = (1024, 2048)


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
    ok = [r for r in records if "error" not in r]
    ref = {(r["task"], str(r["id"])): r for r in ok if r["method"] == reference}
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]

    def bucket(r: Mapping[str, Any]) -> str | None:
        tokens = ref.get((r["task"], str(r["id"])), r).get("context_tokens")
        return None if tokens is None else labels[sum(tokens >= e for e in edges)]

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
    return out


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
    ci = f" [{g['lo']:.0%}, {g['hi']:.0%}]" if g.get("lo") is not None else ""
    return f"{g['share']:.0%}{ci}"


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
    by_context = summary.get("by_context") or {}
    if any(len(buckets) > 1 for buckets in by_context.values()):
        methods = summary["methods"]
        out += ["", f"**By context length** (prompt tokens of the {ref} input), per task: F1 (fidelity)", "",
                "| task | context | n | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
        for task, buckets in by_context.items():
            for b, cells in buckets.items():
                n = max(c["n"] for c in cells.values())
                out.append(f"| {task} | {b} | {n} | " + " | ".join(
                    f"{_fmt(cells[m]['f1'], 'score')} ({_fmt(cells[m]['fidelity'], 'score')})" if m in cells else "—"
                    for m in methods) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------- plots
_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_f1_by_task(summary: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped bars: token F1 per task (groups) and method (bars), with the macro mean as a last group.

    Examples
    --------
    >>> plot_f1_by_task(summary, "results/x/f1_by_task.png")  # doctest: +SKIP
    """
    tasks = summary["tasks"] + ([MEAN] if len(summary["tasks"]) > 1 else [])
    methods = summary["methods"]
    fig = _figure(max(6.0, 1.4 * len(tasks) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        xs, ys = [], []
        for i, task in enumerate(tasks):
            stats = summary["mean"].get(method) if task == MEAN else summary["results"][task].get(method)
            if task == MEAN and stats is not None and stats.get("tasks_covered", 0) < len(summary["tasks"]):
                stats = None
            if stats and stats.get("f1") is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(stats["f1"])
        ax.bar(xs, ys, width=width, label=method, color=_COLORS[j % len(_COLORS)])
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("token F1")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method", title_fontsize=7)
    ax.set_title(title or "Token F1 per task and method")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def plot_f1_vs_ttft(summary: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Scatter of token F1 against mean TTFT (log x): colour = method, marker = task; large = macro mean.

    Examples
    --------
    >>> plot_f1_vs_ttft(summary, "results/x/f1_vs_ttft.png")  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    tasks, methods = summary["tasks"], summary["methods"]
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for j, method in enumerate(methods):
        color = _COLORS[j % len(_COLORS)]
        for i, task in enumerate(tasks):
            stats = summary["results"][task].get(method)
            if stats and stats.get("ttft_s") and stats.get("f1") is not None:
                ax.scatter(stats["ttft_s"] * 1e3, stats["f1"], color=color, marker=_MARKERS[i % len(_MARKERS)], s=28,
                           alpha=0.75)
        stats = summary["mean"].get(method)
        if len(tasks) > 1 and stats and stats.get("tasks_covered") == len(tasks) and stats.get("ttft_s"):
            ax.scatter(stats["ttft_s"] * 1e3, stats["f1"], color=color, marker="o", s=140, edgecolors="black",
                       linewidths=0.8, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("mean TTFT (ms, log scale)")
    ax.set_ylabel("token F1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    method_handles = [Line2D([], [], color=_COLORS[j % len(_COLORS)], marker="o", linestyle="", label=m)
                      for j, m in enumerate(methods)]
    task_handles = [Line2D([], [], color="gray", marker=_MARKERS[i % len(_MARKERS)], linestyle="", label=t)
                    for i, t in enumerate(tasks)]
    if len(tasks) > 1:
        task_handles.append(Line2D([], [], color="gray", marker="o", markersize=10, markeredgecolor="black",
                                   linestyle="", label="mean over tasks"))
    first = ax.legend(handles=method_handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method",
                      title_fontsize=7)
    ax.add_artist(first)
    ax.legend(handles=task_handles, fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="task",
              title_fontsize=7)
    ax.set_title(title or "Quality vs time to first token")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


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


def _load_summary(results_dir: Path) -> dict[str, Any]:
    if not (results_dir / RESULTS_FILE).is_file():
        write_report(results_dir)
    return json.loads((results_dir / RESULTS_FILE).read_text(encoding="utf-8"))


def per_task_adapter_table(per_task_dirs: Sequence[str | os.PathLike],
                           main_dirs: Sequence[str | os.PathLike] = (), method: str = "kv_packet") -> str:
    """One row per (model, task) run of a task-specific adapter: its F1 and fidelity beside full recompute, no
    recompute and, when a main folder of the same model has it on the same examples, the mixture adapter."""
    mains: dict[str, dict[str, Any]] = {}
    for d in main_dirs:
        summary = _load_summary(Path(d))
        mains[summary.get("meta", {}).get("model", "")] = summary
    head = ("| model | task | adapter | n | full recompute F1 | no recompute F1 | mixture adapter F1 (fidelity) | "
            "task adapter F1 (fidelity) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for d in per_task_dirs:
        summary = _load_summary(Path(d))
        meta = summary.get("meta", {})
        for task in summary["tasks"]:
            cell = summary["results"][task]
            if method not in cell:
                continue
            main = mains.get(meta.get("model", ""), {}).get("results", {}).get(task, {}).get(method)
            mix = f"{_fmt(main['f1'], 'score')} ({_fmt(main['fidelity'], 'score')})" if main else "—"

            def f1(name: str) -> str:
                return _fmt(cell[name]["f1"], "score") if name in cell else "—"

            lines.append(f"| {meta.get('model', '?')} | {task} | `{meta.get('adapter', '?')}` | {cell[method]['n']} | "
                         f"{f1('full_recompute')} | {f1('no_recompute')} | {mix} | {f1(method)} "
                         f"({_fmt(cell[method]['fidelity'], 'score')}) |")
    return "\n".join(lines)


def render_docs(results_dirs: str | os.PathLike | Sequence[str | os.PathLike],
                docs_path: str | os.PathLike = "docs/results.md", image_dir: str | os.PathLike | None = None,
                title: str = "Results", per_task_dirs: Sequence[str | os.PathLike] = (),
                notes: str | None = None) -> Path:
    """Write a docs page from one or more results folders: tables, plots (copied to `image_dir`), exact commands.

    Parameters
    ----------
    results_dirs:
        A folder written by the runner, or several (one section each, e.g. one per model). `results.json` and the
        plots are rebuilt from `samples.jsonl` when missing.
    docs_path:
        The page to write (default `docs/results.md`).
    image_dir:
        Where the plot images go (default `img/` beside the page); they are named after each results folder.
    title:
        Page title.
    per_task_dirs:
        Results folders of task-specific adapters (one task each), summarised in one table at the end.
    notes:
        Markdown appended at the end (e.g. learning curves and what was tried).

    Returns
    -------
    pathlib.Path
        The page written.

    Examples
    --------
    >>> render_docs(["results/qwen2.5-coder-0.5b", "results/smollm2-135m"], "docs/results.md")  # doctest: +SKIP
    PosixPath('docs/results.md')
    """
    dirs = [results_dirs] if isinstance(results_dirs, (str, os.PathLike)) else list(results_dirs)
    if not dirs:
        raise ReportError("render_docs needs at least one results folder.")
    docs_path = Path(docs_path)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = Path(image_dir) if image_dir is not None else docs_path.parent / "img"
    image_dir.mkdir(parents=True, exist_ok=True)
    intro = (
        "Token F1 and exact match are fractions (SQuAD normalisation); *fidelity* is the token F1 of each method's "
        f"answer against the {REFERENCE_METHOD} answer (it separates method error from label noise). TTFT runs from "
        "the start of cache preparation (packet lookup, composition, any recompute) to the first token's logits; "
        "packets are pre-encoded and resident, as on a store hit. FLOPs are analytic, query-time only "
        "(`hf_kvpacket.baselines.flops`)."
    )
    lines = [f"# {title}", "", intro, ""]
    for results_dir in map(Path, dirs):
        if not (results_dir / RESULTS_FILE).is_file() or not (results_dir / PLOT_F1).is_file():
            write_report(results_dir)
        summary = json.loads((results_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        meta = summary.get("meta", {})
        stem = results_dir.resolve().name
        images = {}
        for name in (PLOT_F1, PLOT_TTFT):
            target = image_dir / f"{stem}-{name}"
            shutil.copyfile(results_dir / name, target)
            images[name] = Path(os.path.relpath(target, docs_path.parent)).as_posix()
        heading = f"{meta.get('model', stem)}, adapter `{meta.get('adapter') or 'none'}`"
        lines += [f"## {heading}" if len(dirs) > 1 else f"Model `{meta.get('model', '?')}`, adapter "
                  f"`{meta.get('adapter') or 'none'}`.", "", "Reproduce with:", "", "```bash",
                  meta.get("command", "kvpacket eval ..."), "```", "", _meta_line(meta), "", markdown_tables(summary),
                  f"![Token F1 per task]({images[PLOT_F1]})", "", f"![F1 vs TTFT]({images[PLOT_TTFT]})", ""]
    if per_task_dirs:
        lines += ["## Per-task adapters", "", "Each task-specific adapter evaluated on its own task, on the same "
                  "examples as the sections above (their full-recompute and no-recompute answers are reused: "
                  "`--reuse-from`). Commands are in each folder's `results.md`.", "",
                  per_task_adapter_table(per_task_dirs, dirs), ""]
    if notes:
        lines += [notes.rstrip(), ""]
    docs_path.write_text("\n".join(lines), encoding="utf-8")
    return docs_path


__all__ = [
    "REFERENCE_METHOD",
    "SAMPLES_FILE",
    "RESULTS_FILE",
    "TABLE_FILE",
    "PLOT_F1",
    "PLOT_TTFT",
    "ReportError",
    "read_records",
    "by_context_length",
    "aggregate",
    "markdown_tables",
    "plot_f1_by_task",
    "plot_f1_vs_ttft",
    "write_report",
    "render_docs",
]
