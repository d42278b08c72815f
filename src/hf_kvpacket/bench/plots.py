"""The benchmark's plot: TTFT against context length, one PNG per model (`docs/img/perf_ttft_*.png`)."""

from __future__ import annotations

import os
from typing import Any

from .methods import LABELS, METHODS
from .tables import _models, _slug


def plot_ttft(results: dict[str, Any], img_dir: str) -> list[str]:
    """One PNG per model: TTFT (log) against context length (log), one line per method, the lower bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    paths = []
    styles = {"lower_bound": dict(color="black", linestyle="--", linewidth=2.0, marker="", zorder=5)}
    dev = "GPU" if str(results["meta"]["system"].get("device", "cpu")).startswith("cuda") else "CPU"
    dtype = results["meta"]["config"].get("dtype", "")
    for model in _models(results):
        cases = sorted((c for c in results["cases"] if c["model"] == model), key=lambda c: c["context_tokens"])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in METHODS:
            pts = [(c["context_tokens"], c["methods"][m]["ttft"]["median"]) for c in cases
                   if m in c["methods"] and c["methods"][m]["ttft"].get("n")]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=LABELS[m], **styles.get(m, dict(marker="o", linewidth=1.5)))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens (preamble + documents)")
        ax.set_ylabel("time to first token (s, median)")
        ax.set_title(f"TTFT, {model} ({dev}, {dtype}, {results['meta']['config'].get('num_docs')} documents)")
        ax.grid(True, which="both", alpha=0.3)
        xs = sorted({c["context_tokens"] for c in cases})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(img_dir, f"perf_ttft_{_slug(model)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
