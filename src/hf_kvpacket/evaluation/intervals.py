"""95% bootstrap intervals for the result tables: per-cell means, and the share of the stitching gap a method wins.

Percentile bootstrap over examples, seeded (the same records give the same intervals). The gap share of a method on a
task is `(F1(method) - F1(no recompute)) / (F1(full recompute) - F1(no recompute))`, resampled *paired* by example
(one resample draws the same examples for all three methods), so it reads as "how much of what stitching loses does
this method win back" with its uncertainty. It is undefined where the gap is under `MIN_GAP` (nothing to win back).

>>> lo, hi = bootstrap_mean_ci([0.0, 1.0] * 50)
>>> 0.35 < lo < 0.5 < hi < 0.65
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

REPS = 2000
LEVEL = 0.95
MIN_GAP = 0.02
# below this many paired examples a percentile bootstrap is degenerate (3 rows give intervals like [150%, 150%]):
# the share is still reported, its interval is not
MIN_INTERVAL_N = 10


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_mean_ci(values: Sequence[float], reps: int = REPS, seed: int = 0) -> tuple[float, float] | None:
    """The 95% percentile-bootstrap interval of the mean of `values` (`None` for fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size < 2:
        return None
    means = x[_rng(seed).integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float], reps: int = REPS,
                      seed: int = 0) -> tuple[float, float] | None:
    """The 95% percentile-bootstrap interval of `mean(a) - mean(b)` for paired values (`a[i]`, `b[i]` are one example
    scored two ways); `None` for fewer than 2 pairs.

    >>> lo, hi = paired_difference([1.0, 0.5] * 20, [0.5, 0.5] * 20)
    >>> 0.1 < lo < 0.25 < hi < 0.4
    True
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}.")
    return bootstrap_mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), reps=reps, seed=seed)


def macro_paired_difference(groups: Sequence[tuple[Sequence[float], Sequence[float]]], reps: int = REPS,
                            seed: int = 0) -> tuple[float, float] | None:
    """The 95% interval of the *macro* mean difference, `mean over groups of (mean(a) - mean(b))`, resampling the
    examples of every group (task) on their own, so each task keeps its weight whatever its n (stratified paired
    bootstrap); `None` unless every group has at least 2 pairs.

    >>> lo, hi = macro_paired_difference([([1.0, 0.0] * 10, [0.0, 0.0] * 10), ([0.5] * 40, [0.5] * 40)])
    >>> 0.1 < lo < 0.25 < hi < 0.4
    True
    """
    if not groups or any(len(a) != len(b) or len(a) < 2 for a, b in groups):
        return None
    rng = _rng(seed)
    total = np.zeros(reps)
    for a, b in groups:
        d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        total += d[rng.integers(0, d.size, size=(reps, d.size))].mean(axis=1)
    lo, hi = np.quantile(total / len(groups), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def gap_share(per_method: Mapping[str, Mapping[str, float]], method: str, full: str = "full_recompute",
              none: str = "no_recompute", reps: int = REPS, seed: int = 0) -> dict[str, float | None] | None:
    """Share of the no-recompute -> full-recompute F1 gap that `method` wins back, with a paired bootstrap interval.

    `per_method` maps method -> {example id: F1}; only examples all three methods answered count. Returns
    `{"share", "lo", "hi", "n"}`, `share` `None` where the gap is under `MIN_GAP`; `None` when a method is missing.
    Under `MIN_INTERVAL_N` examples `lo`/`hi` are `None` and `"too_few"` is set (the tables print "n too small").
    """
    if not all(m in per_method for m in (method, full, none)):
        return None
    ids = sorted(set(per_method[method]) & set(per_method[full]) & set(per_method[none]))
    if len(ids) < 2:
        return None
    f = np.array([[per_method[m][i] for i in ids] for m in (method, full, none)], dtype=np.float64)
    gap = f[1].mean() - f[2].mean()
    if gap < MIN_GAP:
        return {"share": None, "lo": None, "hi": None, "n": len(ids)}
    share = float((f[0].mean() - f[2].mean()) / gap)
    if len(ids) < MIN_INTERVAL_N:
        return {"share": share, "lo": None, "hi": None, "n": len(ids), "too_few": True}
    idx = _rng(seed).integers(0, len(ids), size=(reps, len(ids)))
    m, fu, no = (f[k][idx].mean(axis=1) for k in range(3))
    valid = (fu - no) >= MIN_GAP / 2
    shares = (m[valid] - no[valid]) / (fu[valid] - no[valid])
    if shares.size < reps // 2:
        return {"share": share, "lo": None, "hi": None, "n": len(ids)}
    lo, hi = np.quantile(shares, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"share": share, "lo": float(lo), "hi": float(hi), "n": len(ids)}


__all__ = ["bootstrap_mean_ci", "paired_difference", "gap_share", "macro_paired_difference", "REPS", "LEVEL", "MIN_GAP", "MIN_INTERVAL_N"]
