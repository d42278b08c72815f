"""The headline scoreboard pools results folders by example: the right adapter's answers, baselines on the same rows."""

import json

import pytest
import torch
from safetensors.torch import save_file

from hf_kvpacket.evaluation.report import ReportError
from hf_kvpacket.evaluation.scoreboard import adapter_fingerprint_of, build_scoreboard, scoreboard_markdown

META = {"model": "tiny", "dtype": "float32", "max_new_tokens": 8, "system_prompt": "s", "split": "eval"}


def _adapter(path, fingerprint):
    path.mkdir(parents=True)
    save_file({"header": torch.zeros(1, 2), "trailer": torch.zeros(1, 2)}, str(path / "adapter_model.safetensors"),
              metadata={"format": "pt", "fingerprint": fingerprint})
    return path


def _run(path, records, **meta):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"meta": {**META, **meta}}))
    with (path / "samples.jsonl").open("w") as f:
        for task, method, sha, answer, f1 in records:
            f.write(json.dumps({"task": task, "method": method, "id": sha, "example_sha": sha, "answer": answer,
                                "f1": f1, "exact_match": f1, "ttft_s": 1.0, "flops": 1.0}) + "\n")
    return path


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    full = [("qa", "full_recompute", f"e{i}", "red car", 1.0) for i in range(4)]
    none = [("qa", "no_recompute", f"e{i}", "blue", 0.0) for i in range(4)]
    # the shipped adapter's run: right on e0-e2, wrong on e3
    _run(root / "mine", full + none + [("qa", "kv_packet", f"e{i}", "red car" if i < 3 else "blue", float(i < 3))
                                       for i in range(4)], adapter_fingerprint="aaa")
    # an older adapter on the same rows: must not count
    _run(root / "old", full + [("qa", "kv_packet", f"e{i}", "red car", 1.0) for i in range(4)],
         adapter_fingerprint="bbb")
    # baselines on three of the four rows, made for the older adapter
    _run(root / "baselines", [("qa", "cacheblend", f"e{i}", "red", 0.5) for i in range(3)], adapter_fingerprint="bbb")
    # same rows in other settings: excluded
    _run(root / "bf16", [("qa", "epic", f"e{i}", "red car", 1.0) for i in range(4)], dtype="bfloat16")
    _run(root / "longer", [("qa", "epic", f"e{i}", "red car", 1.0) for i in range(4)], max_new_tokens=32)
    return root


def test_pools_by_example_and_fingerprint(tmp_path, results):
    adapter = _adapter(tmp_path / "shipped", "aaa")
    assert adapter_fingerprint_of(adapter) == "aaa"
    [entry] = build_scoreboard([results], [adapter])
    row = entry["tasks"]["qa"]
    assert row["n"] == 4
    assert row["f1"]["kv_packet"]["mean"] == pytest.approx(0.75)  # not the older adapter's 1.0
    assert row["fidelity"]["no_recompute"]["mean"] == 0.0
    assert row["fidelity"]["cacheblend"]["n"] == 3 and row["fidelity"]["cacheblend"]["mean"] == pytest.approx(2 / 3)
    assert "epic" not in row["fidelity"]  # bf16 and a different answer budget are not comparable
    assert row["gap_won"]["share"] == pytest.approx(0.75)
    # paired over the three rows both answered: KV Packet 1.0 each, CacheBlend 2/3 each
    assert row["fidelity_vs"]["cacheblend"]["n"] == 3
    assert row["fidelity_vs"]["cacheblend"]["mean"] == pytest.approx(1 / 3)
    assert sorted(entry["sources"]["qa"]) == ["baselines", "mine"]
    text = scoreboard_markdown([entry])
    assert "| qa | 4 |" in text and "0.667 [0.667, 0.667] (n=3)" in text and "+0.333" in text


def test_refuses_an_adapter_without_results(tmp_path, results):
    with pytest.raises(ReportError, match="kvpacket eval --adapter"):
        build_scoreboard([results], [_adapter(tmp_path / "new", "ccc")])
    with pytest.raises(ReportError, match="save_pretrained"):
        build_scoreboard([results], [tmp_path / "missing"])


def test_docs_page_starts_with_the_scoreboard(tmp_path, results):
    from hf_kvpacket.evaluation.pages import main

    adapter = _adapter(tmp_path / "shipped", "aaa")
    page = tmp_path / "docs" / "results.md"
    assert main([str(results / "mine"), str(results / "baselines"), "--docs", str(page), "--scoreboard",
                 str(adapter)]) == 0
    text = page.read_text()
    assert text.index("## Headline") < text.index("## Runs") < text.index("(`mine`)")
    assert "python -m hf_kvpacket.evaluation.pages " in text and "--scoreboard" in text
    assert (tmp_path / "docs" / "img" / "scoreboard.png").is_file()


def test_mean_over_tasks_weighs_each_task_equally(tmp_path):
    root = tmp_path / "results"
    recs = []
    for task, n, kv, cb in (("a", 20, 1.0, 0.0), ("b", 4, 0.0, 0.5)):  # task a has 5x the rows of task b
        for i in range(n):
            sha = f"{task}{i}"
            recs += [(task, "full_recompute", sha, "x", 1.0), (task, "no_recompute", sha, "y", 0.0),
                     (task, "kv_packet", sha, "x" if kv else "y", kv), (task, "cacheblend", sha, "z", cb)]
    _run(root / "mine", recs, adapter_fingerprint="aaa")
    [entry] = build_scoreboard([root], [_adapter(tmp_path / "shipped", "aaa")])
    mean = entry["mean"]
    assert mean["f1"]["kv_packet"]["mean"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2, not 20/24
    assert mean["f1"]["cacheblend"]["mean"] == pytest.approx(0.25)
    assert "epic" not in mean["f1"] and "epic" not in mean["f1_vs"]
    vs = mean["f1_vs"]["cacheblend"]
    assert vs["mean"] == pytest.approx(0.25) and vs["n"] == 24
    lo, hi = vs["ci"]
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)  # no spread within either task
    table = scoreboard_markdown([entry])
    assert "| **mean over tasks** | 24 | 1.000 | 0.000 | 0.250 | — | 0.500 | |" in table
    assert "CacheBlend +0.250 [+0.250, +0.250]" in table


def test_macro_paired_difference_needs_pairs_in_every_task():
    from hf_kvpacket.evaluation.intervals import macro_paired_difference

    assert macro_paired_difference([([1.0, 0.0], [0.0, 0.0]), ([1.0], [0.0])]) is None
    lo, hi = macro_paired_difference([([1.0, 0.0] * 10, [0.0] * 20), ([0.5] * 40, [0.5] * 40)])
    assert 0.1 < lo < 0.25 < hi < 0.4


def test_noise_floor_is_full_recompute_in_another_dtype_against_the_fp32_answers(tmp_path, results):
    adapter = _adapter(tmp_path / "shipped", "aaa")
    assert "noise floor" not in scoreboard_markdown(build_scoreboard([results], [adapter]))  # no such run yet
    # bf16 full recompute on the same rows moves one answer of four; another answer budget never counts
    _run(results / "floor", [("qa", "full_recompute", f"e{i}", "red car" if i else "red", 1.0) for i in range(4)],
         dtype="bfloat16")
    _run(results / "floor-longer", [("qa", "full_recompute", f"e{i}", "no", 0.0) for i in range(4)],
         dtype="bfloat16", max_new_tokens=32)
    [entry] = build_scoreboard([results], [adapter])
    assert entry["noise_floor_dtypes"] == ["bfloat16"]
    floor = entry["tasks"]["qa"]["fidelity"]["noise_floor"]
    assert floor["n"] == 4 and floor["mean"] == pytest.approx((2 / 3 + 3) / 4)  # "red" vs "red car": F1 2/3
    assert entry["tasks"]["qa"]["f1"]["full_recompute"]["mean"] == 1.0  # the fp32 answers stay the reference
    text = scoreboard_markdown([entry])
    assert "full recompute in bfloat16 against the float32 answers" in text and " noise floor |" in text
    assert "| 0.917 [" in text
    from hf_kvpacket.evaluation.scoreboard import plot_scoreboard

    assert plot_scoreboard([entry], tmp_path / "board.png").stat().st_size > 0
