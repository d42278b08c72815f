"""Learning curves of trained adapters (held-out KL vs training samples), as a plot and a markdown table.

Reads each adapter's `training_log.json`; a warm-started adapter's log embeds the log of the adapter it started from
(`previous`), so a chain of resumed or continued runs is drawn as one curve, one segment per run.

Example
-------
>>> from hf_kvpacket.training.curves import learning_curves_markdown, plot_learning_curves
>>> plot_learning_curves(["adapters/qwen2.5-coder-0.5b-instruct-mixture"], "docs/img/learning_curves.png")
>>> print(learning_curves_markdown(["adapters/qwen2.5-coder-0.5b-instruct-mixture"]))

Command line::

    python -m hf_kvpacket.training.curves adapters/*-mixture --plot docs/img/learning_curves.png
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class Run:
    """One training run of a chain: its held-out KL at each step and its effective batch."""

    task: str
    effective_batch: int
    num_train: int | None
    num_val: int | None
    lr: float | None
    val_kl: list[tuple[int, float]] = field(default_factory=list)
    no_adapter_kl: float | None = None  # the same validation rows without soft tokens (no recompute)
    # greedy answers of the first validation rows at each evaluation (`--answer-check`): fidelity to the teacher
    answer_fidelity: list[tuple[int, float]] = field(default_factory=list)
    no_adapter_fidelity: float | None = None
    hours: float | None = None  # wall-clock hours the run trained and evaluated (`wall_hours`; older logs: None)
    # mixed validation rows: per task, the share of its no-adapter KL closed at each evaluation (`eval_<task>_gain`)
    task_gain: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return max((s for s, _ in self.val_kl), default=0)


def load_chain(adapter_dir: str) -> list[Run]:
    """The runs that produced an adapter, oldest first."""
    with open(os.path.join(adapter_dir, "training_log.json"), encoding="utf-8") as f:
        log = json.load(f)
    chain: list[Run] = []
    while log:
        args = log.get("training_args", {})
        evals = [(int(h["step"]), float(h["eval_loss"])) for h in log.get("log_history", []) if "eval_loss" in h]
        dedup: dict[int, float] = {}
        for step, kl in evals:  # the closing evaluation of the best checkpoint repeats the last step: keep the first
            dedup.setdefault(step, kl)
        fid: dict[int, float] = {}
        gains: dict[str, dict[int, float]] = {}
        for h in log.get("log_history", []):
            if "eval_answer_fidelity" in h:
                fid.setdefault(int(h["step"]), float(h["eval_answer_fidelity"]))
            for key, value in h.items():
                if key.startswith("eval_") and key.endswith("_gain") and key != "eval_worst_task_gain":
                    gains.setdefault(key[len("eval_"):-len("_gain")], {}).setdefault(int(h["step"]), float(value))
        chain.append(Run(task=args.get("task", "?"), effective_batch=int(args.get("effective_batch", 4)),
                         num_train=args.get("num_train"), num_val=args.get("num_val"), lr=args.get("lr"),
                         val_kl=sorted(dedup.items()), no_adapter_kl=args.get("no_adapter_val_kl"),
                         answer_fidelity=sorted(fid.items()),
                         no_adapter_fidelity=(args.get("no_adapter_answers") or {}).get("answer_fidelity"),
                         hours=max((h["wall_hours"] for h in log.get("log_history", []) if "wall_hours" in h),
                                   default=None),
                         task_gain={t: sorted(points.items()) for t, points in gains.items()}))
        log = log.get("previous")
    return chain[::-1]


def _label(adapter_dir: str) -> str:
    return os.path.basename(os.path.normpath(adapter_dir))


def _segment(ax: Any, points: list[tuple[int, float]], reference: float | None, offset: int, batch: int, i: int,
             color: Any, label: str) -> Any:
    """One run's curve (x: samples seen over the chain) and its no-adapter line; returns the chain's colour."""
    xs = [offset + step * batch for step, _ in points]
    (line,) = ax.plot(xs, [v for _, v in points], marker="o", markersize=3, color=color,
                      linestyle="-" if i % 2 == 0 else "--", label=label if i == 0 else None)
    if reference is not None:
        ax.hlines(reference, xs[0], max(xs[-1], xs[0] + 1), colors=line.get_color(), linestyles=":",
                  label=f"{label}: no adapter" if i == 0 else None)
    return line.get_color()


def _style(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xlabel("training samples seen (cumulative over warm-started runs)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def plot_learning_curves(adapter_dirs: Sequence[str], path: str) -> str:
    """Held-out KL vs training samples seen (cumulative over a chain), log-free linear axes. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = {d: load_chain(d) for d in adapter_dirs}
    with_answers = any(run.answer_fidelity for chain in chains.values() for run in chain)
    with_tasks = any(run.task_gain for chain in chains.values() for run in chain)
    panels = 1 + with_answers + with_tasks
    fig, axes = plt.subplots(1, panels, figsize=(1 + 6.2 * panels, 4.5), squeeze=False)
    styles = iter(("-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1))))
    task_style: dict[str, Any] = {}
    task_colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    task_color: dict[str, Any] = {}
    labelled: set[str] = set()  # one legend entry per (adapter, task), not one per warm-started run
    for adapter_dir, chain in chains.items():
        offset, color = 0, None
        for i, run in enumerate(chain):
            color = _segment(axes[0][0], run.val_kl, run.no_adapter_kl, offset, run.effective_batch, i, color,
                             _label(adapter_dir))
            if with_answers and run.answer_fidelity:
                first = not any(r.answer_fidelity for r in chain[:i])  # label the chain's first segment drawn here
                _segment(axes[0][1], run.answer_fidelity, run.no_adapter_fidelity, offset, run.effective_batch,
                         0 if first else i, color, _label(adapter_dir))
            for task, points in run.task_gain.items():  # one line style per task; one colour per task for one chain
                if task not in task_style:
                    task_style[task] = next(styles, "-")
                    task_color[task] = next(task_colors, None)
                label = f"{_label(adapter_dir)}: {task}"
                axes[0][-1].plot([offset + step * run.effective_batch for step, _ in points], [g for _, g in points],
                                 marker="o", markersize=3, color=task_color[task] if len(chains) == 1 else color,
                                 linestyle=task_style[task], label=None if label in labelled else label)
                labelled.add(label)
            offset += run.steps * run.effective_batch
    _style(axes[0][0], "held-out KL (teacher || student), answer tokens",
           "Adapter learning curves (each segment: one run, on its own validation rows;\n"
           "dotted: the same rows without adapter, i.e. no recompute)")
    if with_answers:
        _style(axes[0][1], "greedy answer fidelity to full recompute (token F1)",
               "Greedy answers of the first validation rows at each evaluation\n"
               "(PacketCache + generate, float32; dotted: no adapter)")
    if with_tasks:
        axes[0][-1].axhline(0.0, color="grey", linewidth=0.8)
        _style(axes[0][-1], "share of the task's no-adapter KL closed",
               "Mixed validation rows, per task (0: no better than no adapter;\n"
               "checkpoints kept on the worst task with --select-on worst-task)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves_markdown(adapter_dirs: Sequence[str]) -> str:
    """One row per run: adapter, task, samples, hours, validation rows, lr, KL without adapter, at the start, best,
    last."""
    lines = ["| adapter | run | task | train rows | val rows | lr | samples seen | hours | val KL no adapter | start "
             "| best | last |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for adapter_dir in adapter_dirs:
        for i, run in enumerate(load_chain(adapter_dir), 1):
            kls = [kl for _, kl in run.val_kl]
            if not kls:
                continue
            lines.append(f"| `{_label(adapter_dir)}` | {i} | {run.task} | {run.num_train or '?'} | "
                         f"{run.num_val or '?'} | {run.lr if run.lr is not None else '?'} | "
                         f"{run.steps * run.effective_batch} | "
                         f"{'?' if run.hours is None else f'{run.hours:.2f}'} | "
                         f"{'?' if run.no_adapter_kl is None else f'{run.no_adapter_kl:.4f}'} | "
                         f"{kls[0]:.4f} | {min(kls):.4f} | {kls[-1]:.4f} |")
    return "\n".join(lines)


def task_gains_markdown(adapter_dirs: Sequence[str]) -> str:
    """Runs validated on several tasks: per task, the share of its no-adapter KL closed at the start, best and last
    evaluation (empty when no run logged per-task gains)."""
    lines = ["| adapter | run | task | gain at start | best | last |", "|---|---|---|---|---|---|"]
    for adapter_dir in adapter_dirs:
        for i, run in enumerate(load_chain(adapter_dir), 1):
            for task, points in run.task_gain.items():
                values = [g for _, g in points]
                lines.append(f"| `{_label(adapter_dir)}` | {i} | {task} | {values[0]:.1%} | {max(values):.1%} | "
                             f"{values[-1]:.1%} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hf_kvpacket.training.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapters", nargs="+", help="adapter folders with a training_log.json")
    p.add_argument("--plot", default=None, help="write the plot here (PNG)")
    args = p.parse_args(argv)
    if args.plot:
        print(f"Wrote {plot_learning_curves(args.adapters, args.plot)}")
    print(learning_curves_markdown(args.adapters))
    gains = task_gains_markdown(args.adapters)
    if gains:
        print("\nShare of the no-adapter KL closed, per validation task:\n\n" + gains)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Run", "load_chain", "plot_learning_curves", "learning_curves_markdown", "task_gains_markdown"]
