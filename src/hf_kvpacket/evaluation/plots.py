"""The figures of a results folder: F1 per task (bars) and F1 against time to first token (one point per method).

Rendered with matplotlib's Agg canvas (no display, no pyplot state), from the summary `report.aggregate` returns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MEAN = "mean"  # the column of macro averages (as in report.py)

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


__all__ = ["plot_f1_by_task", "plot_f1_vs_ttft"]
