"""Bootstrap intervals and the gap share (evaluation/intervals.py), and their place in the result tables."""

import random

from hf_kvpacket.evaluation.intervals import bootstrap_mean_ci, gap_share
from hf_kvpacket.evaluation.report import aggregate, markdown_tables


def test_mean_interval_covers_the_mean_and_narrows_with_n():
    rng = random.Random(0)
    small = [rng.random() for _ in range(20)]
    large = small * 10
    lo_s, hi_s = bootstrap_mean_ci(small)
    lo_l, hi_l = bootstrap_mean_ci(large)
    mean = sum(small) / len(small)
    assert lo_s < mean < hi_s and lo_l < mean < hi_l and (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    assert bootstrap_mean_ci(small) == (lo_s, hi_s)  # seeded
    assert bootstrap_mean_ci([1.0]) is None


def test_gap_share_known_cases():
    ids = [str(i) for i in range(40)]
    full = {i: 1.0 if int(i) % 4 else 0.0 for i in ids}  # .75
    none = {i: 0.25 if int(i) % 2 else 0.0 for i in ids}  # .125
    scores = {"full_recompute": full, "no_recompute": none}
    assert gap_share({**scores, "m": dict(full)}, "m")["share"] == 1.0
    assert gap_share({**scores, "m": dict(none)}, "m")["share"] == 0.0
    half = {i: (full[i] + none[i]) / 2 for i in ids}
    g = gap_share({**scores, "m": half}, "m")
    assert abs(g["share"] - 0.5) < 1e-12 and g["lo"] <= 0.5 <= g["hi"] and g["n"] == 40
    assert gap_share({**scores, "m": half, "no_recompute": full}, "m")["share"] is None  # no gap
    assert gap_share(scores, "m") is None


def test_tables_show_intervals_and_gap_share():
    recs = []
    for i in range(10):
        for method, f1 in (("full_recompute", 1.0), ("no_recompute", 0.0), ("kv_packet", 1.0 if i < 6 else 0.0)):
            recs.append(dict(task="t", method=method, id=str(i), answer=str(f1), f1=f1, exact_match=f1, ttft_s=1.0,
                             flops=1.0))
    summary = aggregate(recs)
    cell = summary["results"]["t"]["kv_packet"]
    assert abs(cell["gap_won"]["share"] - 0.6) < 1e-12 and cell["f1_ci"][0] < 0.6 < cell["f1_ci"][1]
    md = markdown_tables(summary)
    assert "gap won back" in md and "| kv_packet | 60% [" in md and "0.600 [" in md
