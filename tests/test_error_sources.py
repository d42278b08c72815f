"""Error sources: every disagreeing answer lands in the category of the document it came from."""

import doctest
import json

from hf_kvpacket.evaluation import error_sources as es
from hf_kvpacket.evaluation.runner import example_sha
from hf_kvpacket.tasks import load_task

DOCS = ["Marie Curie was born in Warsaw in 1867.", "Alan Turing was born in London in 1912.",
        "The Danube flows through Vienna."]
ROW = {"id": "r", "task": "qa", "documents": DOCS, "question": "Where was Marie Curie born?", "answers": ["Warsaw"]}


def _records(**answers):
    return [{"task": "qa", "id": "r", "method": m, "answer": a} for m, a in answers.items()]


def test_each_category():
    cases = {"Warsaw": "agrees", "in 1867": "gold document", "London": "other document",
             "Krakow, Poland": "no document"}
    for answer, category in cases.items():
        counts = es.error_sources(_records(full_recompute="Warsaw", kv_packet=answer), [ROW])[("qa", "kv_packet")]
        assert counts[category] == 1 and sum(counts.values()) == 1, (answer, counts)


def test_agree_threshold_and_reference_excluded():
    recs = _records(full_recompute="born in Warsaw", kv_packet="Warsaw")  # fidelity .5 (precision 1, recall 1/3)
    assert es.error_sources(recs, [ROW], agree=0.5)[("qa", "kv_packet")]["agrees"] == 1
    assert es.error_sources(recs, [ROW], agree=0.8)[("qa", "kv_packet")]["gold document"] == 1
    assert ("qa", "full_recompute") not in es.error_sources(recs, [ROW])


def test_gold_falls_back_to_the_reference_answers_document():
    row = {**ROW, "answers": ["the Polish capital"]}  # in no document
    same = es.error_sources(_records(full_recompute="Warsaw", kv_packet="in 1867"), [row])[("qa", "kv_packet")]
    other = es.error_sources(_records(full_recompute="Warsaw", kv_packet="Vienna"), [row])[("qa", "kv_packet")]
    assert same["gold document"] == 1 and other["other document"] == 1


def test_errors_and_unknown_rows_are_skipped():
    recs = _records(full_recompute="Warsaw", kv_packet="London") + [
        {"task": "qa", "id": "r", "method": "epic", "error": "boom"},
        {"task": "qa", "id": "other", "method": "kv_packet", "answer": "x"}]
    out = es.error_sources(recs, [ROW])
    assert list(out) == [("qa", "kv_packet")] and sum(out[("qa", "kv_packet")].values()) == 1


def test_markdown_shares():
    out = es.error_sources(_records(full_recompute="Warsaw", kv_packet="London"), [ROW])
    table = es.error_sources_markdown(out)
    assert "| qa | kv_packet | 1 | 0% (0) | 0% (0) | 100% (1) | 0% (0) |" in table


def test_module_examples():
    assert doctest.testmod(es).failed == 0


def test_cli_rebuilds_rows_and_drops_stale_records(tmp_path, capsys):
    rows = list(load_task("biography", "eval", num_samples=2, seed=3))
    (tmp_path / "run_config.json").write_text(json.dumps(
        {"config": {"tasks": ["biography"], "split": "eval", "num_samples": 2, "seed": 3}}))
    recs = []
    for row in rows:
        gold = row["answers"][0]
        other = next(d for d in row["documents"] if gold.lower() not in d.lower()).split()[:4]
        for method, answer in (("full_recompute", gold), ("kv_packet", " ".join(other))):
            recs.append({"task": "biography", "id": row["id"], "method": method, "answer": answer,
                         "example_sha": example_sha(row)})
    recs.append({**recs[-1], "example_sha": "stale"})  # another run's documents under the same id: ignored
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert es.main([str(tmp_path)]) == 0
    assert "| biography | kv_packet | 2 | 0% (0) | 0% (0) | 100% (2) | 0% (0) |" in capsys.readouterr().out


def test_missing_run_config_names_the_fix(tmp_path):
    try:
        es.rows_of_run(tmp_path)
    except es.ReportError as e:
        assert "run_config.json" in str(e) and "kvpacket eval" in str(e)
    else:
        raise AssertionError("no error")
