"""Answer metrics: SQuAD-normalised token F1, exact match, fidelity, and the `evaluate` module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_kvpacket.evaluation.metrics import (
    METRIC_DIR,
    compute_metrics,
    exact_match,
    fidelity,
    load_f1_metric,
    normalize_answer,
    token_f1,
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat, an owl & the dog!! ", "cat owl dog"),
        ("U.S.A.", "usa"),
        ("Theory", "theory"),  # "the" inside a word is not an article
        ("", ""),
        ("the a an", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1_exact_values():
    assert token_f1("Paris", ["Paris"]) == 1.0
    assert token_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)  # P = 1/2, R = 1
    assert token_f1("Paris", ["Paris, France"]) == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert token_f1("red blue green", ["blue green yellow purple"]) == pytest.approx(4 / 7)  # P = 2/3, R = 1/2
    assert token_f1("London", ["Paris"]) == 0.0
    assert token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # token multiset overlap is 1


def test_normalisation_of_articles_and_punctuation():
    assert exact_match("The Beatles!", ["beatles"]) == 1.0
    assert exact_match("an apple.", ["Apple"]) == 1.0
    assert token_f1("the   Blue-Whale", ["bluewhale"]) == 1.0
    assert exact_match("Beatles band", ["beatles"]) == 0.0


def test_max_over_golds():
    assert token_f1("blue whale", ["shark", "the blue whale"]) == 1.0
    assert token_f1("blue whale", ["whale shark", "orca"]) == pytest.approx(0.5)
    assert exact_match("x", ["y", "X."]) == 1.0
    assert token_f1("blue whale", "the blue whale") == 1.0  # a single string is one gold


def test_empty_strings():
    assert token_f1("", [""]) == 1.0
    assert token_f1("", ["cat"]) == 0.0
    assert token_f1("cat", [""]) == 0.0
    assert token_f1("the", [""]) == 1.0  # normalises to empty
    assert token_f1("cat", []) == 0.0  # no golds counts as [""]
    assert exact_match("", []) == 1.0
    assert exact_match("", ["cat"]) == 0.0


def test_fidelity():
    assert fidelity("in 1912", "1912") == pytest.approx(2 / 3)
    assert fidelity("The answer.", "answer") == 1.0
    assert fidelity("", "") == 1.0


def test_compute_metrics_micro_average():
    predictions = ["Paris", "a cat sat", "", "blue"]
    references = [["paris"], ["the cat"], ["x"], ["red", "Blue!"]]
    result = compute_metrics(predictions, references)
    assert result == {
        "f1": pytest.approx((1 + 2 / 3 + 0 + 1) / 4),
        "exact_match": 0.5,
        "num_samples": 4,
    }
    with_reference = compute_metrics(predictions, references, reference_predictions=["Paris", "cat", "", "red"])
    assert with_reference["fidelity"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert compute_metrics([], []) == {"f1": 0.0, "exact_match": 0.0, "num_samples": 0}


def test_compute_metrics_length_mismatch():
    with pytest.raises(ValueError):
        compute_metrics(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        compute_metrics(["a"], [["a"]], reference_predictions=[])


CASES = {
    "predictions": ["Paris", "a cat sat", "", "blue", "1912", "New York City"],
    "references": [["paris"], ["the cat"], ["x"], ["red", "Blue!"], ["in 1912"], ["NYC", "New York"]],
    "reference_predictions": ["Paris", "cat", "", "red", "1912", "New York"],
}


def test_evaluate_module_loads_from_local_path_and_agrees():
    pytest.importorskip("evaluate")
    assert (METRIC_DIR / "kvpacket_f1.py").is_file()
    metric = load_f1_metric()
    result = metric.compute(**CASES)
    expected = compute_metrics(**CASES)
    assert set(result) == {"f1", "exact_match", "fidelity", "num_samples"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)
    plain = metric.compute(predictions=CASES["predictions"], references=CASES["references"])
    assert "fidelity" not in plain
    assert plain["f1"] == pytest.approx(expected["f1"])


def test_evaluate_load_works_offline(tmp_path):
    """`evaluate.load(<folder>)` in a fresh process with every Hub switch off and an empty HF cache."""
    pytest.importorskip("evaluate")
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
    )
    script = (
        "import json, sys, evaluate\n"
        "from hf_kvpacket.evaluation.metrics import METRIC_DIR\n"
        "metric = evaluate.load(str(METRIC_DIR))\n"
        "print(json.dumps(metric.compute(**json.loads(sys.argv[1]))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(CASES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = compute_metrics(**CASES)
    assert set(result) == {"f1", "exact_match", "fidelity", "num_samples"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)
