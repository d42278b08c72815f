"""Fill an adapter's model card with the results of a `kvpacket eval` run (`results.json`).

This reads evaluation's results format, so it lives with the evaluation (training never reads it): after training,
evaluate, then ``update_card(adapter_dir, "results/RUN/results.json")``. The card then names that run
(``eval_source``), and a test checks every shipped card against it.

Examples
--------
>>> from hf_kvpacket.evaluation.card import update_card
>>> update_card("adapters/smollm2-135m-instruct-mixture", "results/smollm2-135m-instruct/results.json")

A mixture adapter evaluated task by task (one run per task, e.g. different row counts) names all its runs:

>>> update_card("adapters/qwen2.5-coder-0.5b-instruct-mixture",
...             ["results/RUN-biography/results.json", "results/RUN-squad/results.json"])
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence


def _paths(results_json: str | Sequence[str]) -> list[str]:
    return results_json.split(",") if isinstance(results_json, str) else list(results_json)


def card_results_from_eval(results_json: str | Sequence[str], method: str = "kv_packet") -> dict[str, dict[str, float]]:
    """Per task: the adapter's F1, exact match and fidelity, beside full-recompute and no-recompute F1 of the run.

    Several results files (a list, or comma-separated) each give their tasks; a task in two of them is refused, so a
    card never silently mixes two evaluations of one task.
    """
    out: dict[str, dict[str, float]] = {}
    source: dict[str, str] = {}
    for path in _paths(results_json):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for task, methods in data["results"].items():
            if method not in methods:
                continue
            if task in out:
                raise ValueError(f"Task {task!r} is evaluated both in {source[task]} and in {path}; name one results "
                                 "file per task.")
            source[task] = path
            out[task] = _row(methods, method)
    return out


def _row(methods: dict[str, Any], method: str) -> dict[str, float]:
    r = methods[method]
    row = {"f1": r["f1"], "exact_match": r["exact_match"], "fidelity": r.get("fidelity"), "n": r["n"]}
    for ref in ("full_recompute", "no_recompute"):
        if ref in methods:
            row[f"{ref}_f1"] = methods[ref]["f1"]
    return {k: float(v) for k, v in row.items() if v is not None}


def update_card(adapter_dir: str, results_json: str | Sequence[str], **extra: Any) -> None:
    """Rewrite `adapter_dir`'s generated card and eval_results.json from one results file, or several (a list or
    comma-separated: one evaluation per task), keeping the training log."""
    from ..adapter import PacketAdapter

    paths = _paths(results_json)
    adapter = PacketAdapter.from_pretrained(adapter_dir)
    log_path = os.path.join(adapter_dir, "training_log.json")
    training_args = {}
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            log = json.load(f)
        training_args = dict(log.get("training_args", {}))
        training_args["val_kl_curve"] = [(h["step"], round(h["eval_loss"], 4)) for h in log.get("log_history", [])
                                         if "eval_loss" in h]
    training_args.update(extra)
    # Where the card's numbers come from (relative to the working directory, normally the repository root), so a
    # test can check that every shipped card matches its evaluation.
    training_args["eval_source"] = ",".join(os.path.relpath(p).replace(os.sep, "/") for p in paths)
    commands = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            commands.append(json.load(f).get("meta", {}).get("command"))
    commands = [c for c in commands if c]
    if commands:
        training_args["eval_command"] = commands[0] if len(commands) == 1 else commands
    else:
        training_args.pop("eval_command", None)  # an earlier evaluation's command would not match these numbers
    if os.path.exists(log_path):
        # extras and the eval source persist, so the next update keeps them
        log["training_args"].update({k: v for k, v in training_args.items() if k != "val_kl_curve"})
        with open(log_path, "w", encoding="utf-8") as f:
            json.dump(log, f, indent=1)
    results = card_results_from_eval(paths)
    task = training_args.get("task") or adapter.config.task
    datasets = list(results) if task in (None, "mixture") else [task]
    adapter.save_pretrained(adapter_dir, eval_results=results, training_args=training_args, datasets=datasets)


__all__ = ["card_results_from_eval", "update_card"]
