"""Docs pages from results folders: a headline scoreboard of the shipped adapters, sections per run with the exact
commands, tables and plots, the per-task adapter table, and notes.

Rebuild `docs/results.md` from every results folder (no model runs)::

    python -m hf_kvpacket.evaluation.pages results --docs docs/results.md --per-task results/per-task \
        --scoreboard adapters/qwen2.5-coder-0.5b-instruct-mixture,adapters/smollm2-135m-instruct-mixture \
        --notes results/notes.md

or, after an evaluation, `kvpacket eval ... --docs docs/results.md --docs-extra ... --docs-scoreboard ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import (
    PLOT_F1,
    PLOT_TTFT,
    REFERENCE_METHOD,
    RESULTS_FILE,
    ReportError,
    _fmt,
    _meta_line,
    markdown_tables,
    write_report,
)
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
                notes: str | None = None, scoreboard: Sequence[str | os.PathLike] = (),
                scoreboard_results: Sequence[str | os.PathLike] | None = None, command: str | None = None) -> Path:
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
    scoreboard:
        Adapter folders (the shipped ones) to put first, as a headline: each against the baselines on the same
        examples, pooled from `scoreboard_results` (default: `results_dirs`) by
        :func:`~hf_kvpacket.evaluation.scoreboard.build_scoreboard`, with a fidelity figure.
    scoreboard_results:
        Results folders (or parents of them) the scoreboard pools from.
    command:
        The command that rebuilds this page, printed under the title.

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
    if command:
        lines += ["Rebuild this page from the results folders (no model runs):", "", "```bash", command, "```", ""]
    if scoreboard:
        from .scoreboard import build_scoreboard, plot_scoreboard, scoreboard_markdown

        board = build_scoreboard(scoreboard_results or dirs, scoreboard)
        figure = plot_scoreboard(board, image_dir / "scoreboard.png")
        lines += ["## Headline: the shipped adapters on held-out rows", "",
                  "Each shipped adapter against full recompute, no recompute, CacheBlend-15% and EPIC, pooled from "
                  "the runs below by example; the sections after it are the individual runs.", "",
                  scoreboard_markdown(board),
                  f"![Fidelity per task, 95% intervals]({Path(os.path.relpath(figure, docs_path.parent)).as_posix()})",
                  "", "## Runs", ""]
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
        # the folder name tells runs of one adapter apart (several tasks, baselines added later)
        heading = f"{meta.get('model', stem)}, adapter `{meta.get('adapter') or 'none'}` (`{stem}`)"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_kvpacket.evaluation.pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results folders, or folders of them (one section each)")
    parser.add_argument("--docs", default="docs/results.md", help="the page to write (default: %(default)s)")
    parser.add_argument("--per-task", nargs="*", default=[], help="results folders (or a parent) of per-task adapters")
    parser.add_argument("--scoreboard", default="", help="comma list of adapter folders for the headline table")
    parser.add_argument("--notes", default=None, help="markdown file appended at the end")
    from .cli import _csv
    from .scoreboard import _results_dirs

    args = parser.parse_args(argv)
    per_task = set(_results_dirs(args.per_task)) if args.per_task else set()
    dirs = [d for d in _results_dirs(args.results) if d not in per_task]
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else None
    adapters = _csv(args.scoreboard)
    command = "python -m hf_kvpacket.evaluation.pages " + shlex.join(sys.argv[1:] if argv is None else argv)
    page = render_docs(dirs, args.docs, per_task_dirs=sorted(per_task), notes=notes, scoreboard=adapters,
                       command=command)
    print(f"Wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
