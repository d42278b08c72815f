"""Every example runs in its fast mode (tiny model, few steps), so examples cannot rot; every public name is
documented and appears in the API reference."""

import inspect
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_fast(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, "--fast"])
    runpy.run_path(os.path.join(ROOT, "examples", name), run_name="__main__")
    assert capsys.readouterr().out.strip()


def test_every_public_name_has_a_docstring_and_is_in_the_api_reference():
    from hf_kvpacket.apidoc import public_names

    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        api = f.read()
    missing_doc, missing_ref = [], []
    for module, name, obj in public_names():
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            missing_doc.append(f"{module}.{name}")
        if f"### `{name}`" not in api:
            missing_ref.append(f"{module}.{name}")
    assert not missing_doc, f"public names without docstring: {missing_doc}"
    assert not missing_ref, f"not in docs/api.md (run `python -m hf_kvpacket.apidoc > docs/api.md`): {missing_ref}"


def test_demo_answers_held_out_questions_three_ways(tmp_path, capsys):
    from hf_kvpacket import PacketAdapter
    from hf_kvpacket.demo import run_demo
    from hf_kvpacket.testing import example_model

    model, tok = example_model(True)
    PacketAdapter.for_model(model, 2, 2, seed=1).save_pretrained(tmp_path / "adapter", model_card=False)
    out = run_demo(adapter_path=str(tmp_path / "adapter"), store_dir=str(tmp_path / "store"), max_new_tokens=3,
                   num_questions=2, num_documents=3, model_and_tokenizer=(model, tok))
    assert len(out["rows"]) == 2 and set(out["right"]) == {"full", "no_recompute", "kv_packet"}
    assert all({"full", "no_recompute", "kv_packet", "gold"} <= set(r) for r in out["rows"])
    printed = capsys.readouterr().out
    assert "KV Packet" in printed and "no recompute" in printed and "Right (token F1" in printed
    again = run_demo(adapter_path=str(tmp_path / "adapter"), store_dir=str(tmp_path / "store"), max_new_tokens=3,
                     num_questions=2, num_documents=3, model_and_tokenizer=(model, tok))
    assert [r["kv_packet"] for r in again["rows"]] == [r["kv_packet"] for r in out["rows"]]  # from the store


def test_demo_picks_the_shipped_adapter_with_the_better_biography_f1(tmp_path):
    import json

    from hf_kvpacket.demo import default_adapter

    assert default_adapter("m", root=str(tmp_path)) is None
    for task, f1 in (("biography", 0.52), ("mixture", 0.55)):
        (tmp_path / f"m-{task}").mkdir()
        (tmp_path / f"m-{task}" / "eval_results.json").write_text(json.dumps({"biography": {"f1": f1}}))
    assert default_adapter("m", root=str(tmp_path)) == str(tmp_path / "m-mixture")
    (tmp_path / "m-mixture" / "eval_results.json").write_text(json.dumps({"biography": {"f1": 0.40}}))
    assert default_adapter("m", root=str(tmp_path)) == str(tmp_path / "m-biography")
    # no card numbers: the per-task adapter, the first that exists
    (tmp_path / "m-biography" / "eval_results.json").unlink()
    (tmp_path / "m-mixture" / "eval_results.json").write_text(json.dumps({"niah": {"f1": 0.9}}))
    assert default_adapter("m", root=str(tmp_path)) == str(tmp_path / "m-biography")
