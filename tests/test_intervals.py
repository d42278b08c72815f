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
    few = {m: {i: v[i] for i in ids[:4]} for m, v in {**scores, "m": half}.items()}
    g = gap_share(few, "m")  # 4 rows: a share, but no (degenerate) interval
    assert g["too_few"] and g["lo"] is None and g["hi"] is None and g["n"] == 4


def test_by_documents_table_says_n_too_small_instead_of_a_degenerate_interval():
    recs = []
    for i in range(13):
        n_docs = 2 if i < 10 else 5  # a bucket of 10 rows and one of 3
        for method, f1 in (("full_recompute", 1.0), ("no_recompute", 0.0), ("kv_packet", 1.0 if i % 2 else 0.0)):
            recs.append(dict(task="t", method=method, id=str(i), answer=str(f1), f1=f1, exact_match=f1, ttft_s=1.0,
                             flops=1.0, num_documents=n_docs))
    md = markdown_tables(aggregate(recs))
    small = next(line for line in md.splitlines() if line.startswith("| t | 4-5 | 3 |"))
    large = next(line for line in md.splitlines() if line.startswith("| t | <4 | 10 |"))
    assert "n too small for an interval" in small and "[" not in small
    assert "50% [" in large


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


def _recs(method, f1s, sha="s", task="t"):
    return [dict(task=task, method=method, id=str(i), answer="a" if f else "b", f1=f, example_sha=sha)
            for i, f in enumerate(f1s)]


def test_paired_difference_is_tighter_than_unpaired_and_signed():
    from hf_kvpacket.evaluation.intervals import paired_difference

    rng = random.Random(1)
    base = [rng.random() for _ in range(60)]
    better = [min(1.0, b + 0.1) for b in base]
    lo, hi = paired_difference(better, base)
    shift = sum(better) / 60 - sum(base) / 60
    assert 0 < lo < shift < hi  # positive, around the observed shift
    lo_u, hi_u = bootstrap_mean_ci(better)
    assert (hi - lo) < 0.5 * (hi_u - lo_u)  # pairing removes the spread between examples
    lo_r, hi_r = paired_difference(base, better)
    assert abs(lo_r + hi) < 1e-12 and abs(hi_r + lo) < 1e-12  # antisymmetric with the same resamples
    import pytest

    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_compare_pairs_by_example_and_refuses_other_rows(tmp_path):
    import json

    import pytest

    from hf_kvpacket.cli import main
    from hf_kvpacket.evaluation.compare import compare_records, compare_runs
    from hf_kvpacket.evaluation.report import ReportError

    a = _recs("kv_packet", [1.0] * 6 + [0.0] * 4) + _recs("full_recompute", [1.0] * 10)
    b = _recs("kv_packet", [1.0] * 3 + [0.0] * 7)[::-1] + _recs("cacheblend", [0.0] * 10)  # order does not matter
    (row,) = compare_records(a, b)
    assert row["n"] == 10 and abs(row["diff"] - 0.3) < 1e-12 and row["lo"] <= 0.3 <= row["hi"]
    assert abs(compare_records(a, b, method_b="cacheblend")[0]["diff"] - 0.6) < 1e-12
    fid = compare_records(a, a, metric="fidelity", method_b="full_recompute")[0]
    assert fid["a"] == 0.6 and fid["b"] == 1.0  # answers agreeing with the run's own full recompute
    with pytest.raises(ReportError, match="example_sha differs"):
        compare_records(a, _recs("kv_packet", [1.0] * 10, sha="other"))
    with pytest.raises(ReportError, match="check the method names"):
        compare_records(a, b, method_b="epic")
    for name, recs in (("x", a), ("y", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    assert compare_runs(str(tmp_path / "x"), f"{tmp_path / 'y'}:cacheblend")[0]["b"] == 0.0
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "y"), "--json"]) == 0


def test_compare_measures_fidelity_against_another_runs_answers(tmp_path):
    import json

    import pytest

    from hf_kvpacket.cli import main
    from hf_kvpacket.evaluation.compare import compare_records
    from hf_kvpacket.evaluation.report import ReportError

    fp32 = _recs("full_recompute", [1.0] * 10) + _recs("kv_packet", [1.0] * 4 + [0.0] * 6)
    bf16 = _recs("full_recompute", [1.0] * 8 + [0.0] * 2)  # numerical noise moved two of ten answers
    row = compare_records(bf16, fp32, "full_recompute", "kv_packet", "fidelity", reference=fp32)[0]
    assert (row["a"], row["b"]) == (0.8, 0.4) and abs(row["diff"] - 0.4) < 1e-12
    # Without a reference each run is measured against its own full recompute: bf16 against itself is 1.0.
    assert compare_records(bf16, fp32, "full_recompute", "kv_packet", "fidelity")[0]["a"] == 1.0
    with pytest.raises(ReportError, match="another row in the reference run"):
        compare_records(bf16, fp32, "full_recompute", "kv_packet", "fidelity",
                        reference=_recs("full_recompute", [1.0] * 10, sha="other"))
    with pytest.raises(ReportError, match="no answers of method 'epic'"):
        compare_records(bf16, fp32, "full_recompute", "kv_packet", "fidelity", reference=fp32, reference_method="epic")
    for name, recs in (("bf16", bf16), ("fp32", fp32)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    assert main(["compare", f"{tmp_path / 'bf16'}:full_recompute", str(tmp_path / "fp32"), "--metric", "fidelity",
                 "--reference", str(tmp_path / "fp32")]) == 0
    with pytest.raises(SystemExit, match="add --metric fidelity"):
        main(["compare", str(tmp_path / "bf16"), str(tmp_path / "fp32"), "--reference", str(tmp_path / "fp32")])
