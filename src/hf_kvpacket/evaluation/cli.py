"""Evaluate KV Packet against the baselines on the QA tasks: per-sample JSONL, results JSON, tables and plots.

`kvpacket eval` (registered by `hf_kvpacket.cli`) or `python -m hf_kvpacket.evaluation.cli`.

Examples
--------
Smoke run on SmolLM2 (10 examples per task, every method, an untrained adapter)::

    kvpacket eval --model smollm2-135m-instruct --tasks biography,niah,hotpotqa,squad --num-samples 10 \\
        --adapter random --output results/smollm2-smoke

Continue an interrupted run, then publish it (with another run as a second section) as `docs/results.md`::

    kvpacket eval ... --output results/qwen --resume --docs docs/results.md --docs-extra results/smollm2

Rebuild the tables and plots of a finished run without running any model::

    kvpacket eval --output results/qwen --report-only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..baselines import DEFAULT_METHODS
from ..tasks import MIXTURE_TASKS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `kvpacket eval` options to `parser`."""
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="offline model name, local folder or Hub id (default: %(default)s)")
    parser.add_argument("--tasks", type=_csv, default=list(MIXTURE_TASKS),
                        help="comma list of tasks (default: %(default)s)")
    parser.add_argument("--methods", type=_csv, default=None,
                        help="comma list of methods, each NAME or NAME:knob=value, e.g. cacheblend:recompute_ratio=0.3 "
                             f"(default: all of {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--num-samples", type=int, default=100, help="examples per task (default: %(default)s)")
    parser.add_argument("--adapter", default=None,
                        help="adapter folder or Hub id for kv_packet; 'random' for an untrained one (smoke tests); "
                             "without one, kv_packet is skipped")
    parser.add_argument("--seed", type=int, default=42, help="dataset seed (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer budget (default: %(default)s)")
    parser.add_argument("--output", default="results/eval", help="results folder (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue a run in --output, skipping finished answers")
    parser.add_argument("--system-prompt", default=None, help="system message (default: the chat template's own)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--split", default="eval", help="dataset split (default: %(default)s)")
    parser.add_argument("--reuse-from", default=None, metavar="DIR",
                        help="copy answers of methods without the adapter from this results folder (same settings)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up answer per method")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild results.json, results.md and the plots from --output/samples.jsonl; run nothing")
    parser.add_argument("--docs", default=None, metavar="PAGE",
                        help="also render the results as a docs page (e.g. docs/results.md, plots under docs/img/)")
    parser.add_argument("--docs-extra", type=_csv, default=[], metavar="DIRS",
                        help="with --docs: more results folders (comma list) rendered as further sections of the page")
    parser.add_argument("--docs-per-task", type=_csv, default=[], metavar="DIRS",
                        help="with --docs: results folders of task-specific adapters, summarised in one table")
    parser.add_argument("--docs-notes", default=None, metavar="FILE",
                        help="with --docs: a markdown file appended to the page (learning curves, what was tried)")
    parser.add_argument("--docs-scoreboard", type=_csv, default=[], metavar="ADAPTERS",
                        help="with --docs: adapter folders (comma list) summarised first, against the baselines on the "
                             "same examples, pooled from the page's results folders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `kvpacket eval` with parsed arguments; returns the exit status."""
    from .pages import render_docs
    from .report import write_report
    from .runner import EvalConfig, run_evaluation

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.report_only:
        summary = write_report(args.output)
    else:
        config = EvalConfig(
            model=args.model, tasks=tuple(args.tasks), methods=tuple(args.methods or DEFAULT_METHODS),
            num_samples=args.num_samples, adapter=args.adapter, seed=args.seed, max_new_tokens=args.max_new_tokens,
            output=args.output, resume=args.resume, system_prompt=args.system_prompt, dtype=args.dtype,
            threads=args.threads, device=args.device, warmup=not args.no_warmup, split=args.split,
            reuse_from=args.reuse_from, explicit_methods=args.methods is not None,
        )
        summary = run_evaluation(config, progress=not args.no_progress)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    if args.docs:
        notes = Path(args.docs_notes).read_text(encoding="utf-8") if args.docs_notes else None
        page = render_docs([args.output, *args.docs_extra], args.docs, per_task_dirs=args.docs_per_task, notes=notes,
                           scoreboard=args.docs_scoreboard)
        print(f"Wrote {page}")
    print(json.dumps({"output": str(args.output), "methods": summary["methods"], "tasks": summary["tasks"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvpacket eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
