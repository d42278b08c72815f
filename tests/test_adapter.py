"""PacketAdapter and KVPacketConfig (adapter.py, config.py): exact save/load, validation of every loaded config and
weight, base-model checks, fingerprints, model cards, and push_to_hub through a mocked HTTP layer."""

import base64
import os
import json

import pytest
import torch
import yaml

from hf_kvpacket import KVPacketConfig, KVPacketError, PacketAdapter
from hf_kvpacket.model_card import EVAL_RESULTS_NAME, GENERATED_MARKER, read_card_metadata
from tiny_models import build

RESULTS = {"biography": {"f1": 0.91, "fidelity": 0.88}, "niah": {"f1": 0.75, "fidelity": 0.8}}


def test_round_trip_is_exact(tmp_path):
    model = build("llama")
    adapter = PacketAdapter.for_model(model, 3, 5, task="biography")
    adapter.save_pretrained(tmp_path)
    loaded = PacketAdapter.from_pretrained(tmp_path)
    assert torch.equal(loaded.header, adapter.header) and torch.equal(loaded.trailer, adapter.trailer)
    assert loaded.config == KVPacketConfig.from_pretrained(tmp_path)
    assert loaded.fingerprint == adapter.fingerprint
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["adapter_type"] == "KV_PACKET" and cfg["num_trailer_tokens"] == 5 and cfg["library_version"]


def test_init_from_embedding_statistics():
    model = build("llama")
    adapter = PacketAdapter.for_model(model, 64, 64)
    w = model.get_input_embeddings().weight
    assert abs(adapter.header.mean().item() - w.mean().item()) < 0.1 * w.std().item() + 1e-3
    assert 0.5 < adapter.header.std().item() / w.std().item() < 2.0


def test_fingerprint_changes_with_weights():
    model = build("llama")
    adapter = PacketAdapter.for_model(model, 2, 2)
    fp = adapter.fingerprint
    with torch.no_grad():
        adapter.trailer[0, 0] += 1e-6
    assert adapter.fingerprint != fp


def test_wrong_hidden_size_refused():
    adapter = PacketAdapter(KVPacketConfig(hidden_size=32))
    with pytest.raises(KVPacketError, match="hidden size"):
        adapter.check_model(build("llama"))


def test_config_validation_and_unknown_keys(caplog):
    with pytest.raises(KVPacketError, match="init"):
        KVPacketConfig(hidden_size=8, init="bogus")
    cfg = KVPacketConfig.from_dict({"hidden_size": 8, "future_field": 1})
    assert cfg.hidden_size == 8 and "future_field" in caplog.text
    with pytest.raises(TypeError):
        KVPacketConfig.from_dict({"num_header_tokens": 2})


def test_card_yaml_parses_and_matches_eval_json(tmp_path):
    model = build("llama")
    adapter = PacketAdapter.for_model(model, 2, 2, task="mixture")
    adapter.config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapter.save_pretrained(tmp_path, eval_results=RESULTS, training_args={"lr": 5e-4}, datasets=["biography", "niah"])
    meta = read_card_metadata(tmp_path / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "hf_kvpacket"
    saved = json.loads((tmp_path / EVAL_RESULTS_NAME).read_text())
    card = {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in meta["model-index"][0]["results"]}
    assert card == saved == RESULTS
    assert "PacketCache" in (tmp_path / "README.md").read_text()


def test_user_edited_card_is_kept(tmp_path):
    adapter = PacketAdapter.for_model(build("llama"), 2, 2)
    adapter.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("# my own card\n")
    adapter.save_pretrained(tmp_path, eval_results=RESULTS)
    assert (tmp_path / "README.md").read_text() == "# my own card\n"


def test_push_to_hub_through_mocked_http(tmp_path, monkeypatch):
    """The Hub client is replaced at its HTTP boundary: we check what would be uploaded."""
    import httpx2
    from huggingface_hub.utils import _http

    calls = []

    def handler(request):
        calls.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/me/adapter", "id": "me/adapter"})
        if path == "/api/validate-yaml":  # the Hub checks the card's YAML before committing
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/me/adapter/commit/abc",
                                              "commitOid": "a" * 40, "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {path}"})

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    try:
        adapter = PacketAdapter.for_model(build("llama"), 2, 2, task="biography")
        url = adapter.push_to_hub("me/adapter", private=True, commit_message="first adapter", token="hf_fake",
                                  eval_results=RESULTS)
    finally:
        _http.set_client_factory(_http.default_client_factory)
    assert url.endswith("/commit/abc")
    assert any(c.url.path == "/api/validate-yaml" for c in calls)
    create = next(c for c in calls if c.url.path == "/api/repos/create")
    body = json.loads(create.content)
    assert body.get("private") is True or body.get("visibility") == "private", body
    commit = next(c for c in calls if "/commit/" in c.url.path)
    lines = [json.loads(line) for line in commit.content.decode().splitlines()]
    assert lines[0]["value"]["summary"] == "first adapter"
    files = {ln["value"]["path"]: base64.b64decode(ln["value"]["content"]) for ln in lines if ln["key"] == "file"}
    assert set(files) >= {"adapter_config.json", "adapter_model.safetensors", "README.md", EVAL_RESULTS_NAME}
    card = files["README.md"].decode()
    assert GENERATED_MARKER in card and yaml.safe_load(card.split("---")[1])["tags"]


def _shipped_adapters():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters")
    return sorted(os.path.join(root, d) for d in os.listdir(root)) if os.path.isdir(root) else []


@pytest.mark.parametrize("folder", _shipped_adapters(), ids=os.path.basename)
def test_shipped_adapter_cards_match_their_evaluation(folder):
    """Every adapter under adapters/ loads, and its card's model-index equals the eval run it names."""
    import json

    import yaml

    from hf_kvpacket.evaluation.card import card_results_from_eval

    repo = os.path.dirname(os.path.dirname(folder))
    adapter = PacketAdapter.from_pretrained(folder)
    assert adapter.header.abs().sum() > 0
    card = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    meta = yaml.safe_load(card.split("---")[1])
    with open(os.path.join(folder, "training_log.json"), encoding="utf-8") as f:
        source = json.load(f)["training_args"].get("eval_source")
    if source is None:
        assert "model-index" not in meta  # no numbers without a source
        return
    expected = card_results_from_eval([os.path.join(repo, one) for one in source.split(",")])
    with open(os.path.join(folder, "eval_results.json"), encoding="utf-8") as f:
        assert json.load(f) == expected
    in_card = {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in meta["model-index"][0]["results"]}
    assert in_card == {t: {k: pytest.approx(v) for k, v in m.items()} for t, m in expected.items()}


def _saved(tmp_path, model=None):
    adapter = PacketAdapter.for_model(model or build("llama"), 2, 3)
    adapter.save_pretrained(tmp_path, model_card=False)
    return adapter


@pytest.mark.parametrize("edit, words", [
    ({"num_header_tokens": 1e9}, "num_header_tokens must be an integer"),
    ({"num_header_tokens": 10**9}, "num_header_tokens must be an integer in 0..4096"),
    ({"hidden_size": "64"}, "hidden_size must be an integer"),
    ({"num_trailer_tokens": True}, "num_trailer_tokens"),
    ({"torch_dtype": "int8"}, "torch_dtype"),
    ({"init_std": "wide"}, "init_std"),
    ({"task": 3}, "task must be a string"),
])
def test_malformed_config_is_refused_naming_the_file(tmp_path, edit, words):
    from hf_kvpacket import AdapterConfigError

    _saved(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(AdapterConfigError, match=f"adapter_config.json: {words}"):
        PacketAdapter.from_pretrained(tmp_path)


def test_config_that_is_not_json_is_refused(tmp_path):
    from hf_kvpacket import AdapterConfigError

    _saved(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"hidden_size": 64,')
    with pytest.raises(AdapterConfigError, match="adapter_config.json: not valid JSON"):
        PacketAdapter.from_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterConfigError, match="JSON object"):
        PacketAdapter.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    from safetensors.torch import save_file

    from hf_kvpacket import AdapterConfigError

    adapter = _saved(tmp_path)
    header = adapter.header.detach().clone()
    header[1, 3] = value
    save_file({"header": header, "trailer": adapter.trailer.detach()}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterConfigError, match="'header' holds 1 NaN/Inf"):
        PacketAdapter.from_pretrained(tmp_path)


def test_weights_must_match_the_config(tmp_path):
    from safetensors.torch import save_file

    from hf_kvpacket import AdapterConfigError

    adapter = _saved(tmp_path)
    save_file({"header": adapter.header.detach()[:1], "trailer": adapter.trailer.detach()},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterConfigError, match="'header' has shape"):
        PacketAdapter.from_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterConfigError, match="unreadable weights"):
        PacketAdapter.from_pretrained(tmp_path)


@pytest.mark.parametrize("path", ["./no-such-adapter", "/nonexistent/adapter", "tests/no-such-adapter", "a/b/c"])
def test_mistyped_local_path_says_no_such_folder(path, monkeypatch):
    import huggingface_hub

    from hf_kvpacket import AdapterConfigError

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("went to the Hub"))
    with pytest.raises(AdapterConfigError, match="No such local folder"):
        PacketAdapter.from_pretrained(path)


def test_adapter_of_another_base_model_with_the_same_hidden_size(tmp_path, caplog):
    import transformers as tf

    from hf_kvpacket import AdapterConfigError
    from tiny_models import COMMON

    _saved(tmp_path)
    other = tf.LlamaForCausalLM(tf.LlamaConfig(**{**COMMON, "num_hidden_layers": 3})).eval()  # same hidden size
    adapter = PacketAdapter.from_pretrained(tmp_path)
    adapter.check_model(build("llama"))  # its own base: fine
    with pytest.raises(AdapterConfigError, match=r"num_hidden_layers \(2 vs 3\).*allow_other_base_model"):
        adapter.check_model(other)
    lenient = PacketAdapter.from_pretrained(tmp_path, allow_other_base_model=True)
    lenient.check_model(other)
    assert "using it anyway" in caplog.text


def test_shipped_adapters_name_their_base_architecture():
    for folder in _shipped_adapters():
        cfg = KVPacketConfig.from_pretrained(folder)
        assert cfg.base_model_architecture and cfg.base_model_architecture["hidden_size"] == cfg.hidden_size


def test_card_from_one_evaluation_per_task(tmp_path, monkeypatch):
    """A mixture adapter evaluated task by task: the card takes each task from its own run, names every run, and
    refuses a task that two runs evaluate."""
    import json

    from hf_kvpacket.evaluation.card import card_results_from_eval, update_card

    monkeypatch.chdir(tmp_path)
    _saved(tmp_path / "ad")
    with open(tmp_path / "ad" / "training_log.json", "w") as f:
        json.dump({"training_args": {"task": "mixture", "eval_command": "stale"}, "log_history": []}, f)

    def run(name, task, f1):
        methods = {"kv_packet": {"f1": f1, "exact_match": 0.0, "fidelity": 0.5, "n": 10},
                   "full_recompute": {"f1": 0.9, "exact_match": 0.5, "n": 10},
                   "no_recompute": {"f1": 0.1, "exact_match": 0.0, "n": 10}}
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "results.json", "w") as f:
            json.dump({"results": {task: methods}, "meta": {"command": f"kvpacket eval --tasks {task}"}}, f)
        return f"{name}/results.json"

    a, b, c = run("a", "biography", 0.6), run("b", "squad", 0.4), run("c", "squad", 0.3)
    update_card("ad", [a, b])
    with open(tmp_path / "ad" / "eval_results.json") as f:
        assert {t: r["f1"] for t, r in json.load(f).items()} == {"biography": 0.6, "squad": 0.4}
    with open(tmp_path / "ad" / "training_log.json") as f:
        args = json.load(f)["training_args"]
    assert args["eval_source"] == f"{a},{b}" and args["eval_command"] == ["kvpacket eval --tasks biography",
                                                                           "kvpacket eval --tasks squad"]
    assert card_results_from_eval(args["eval_source"]) == card_results_from_eval([a, b])
    card = open(tmp_path / "ad" / "README.md", encoding="utf-8").read()
    assert "biography" in card and "squad" in card
    with pytest.raises(ValueError, match="both in b/results.json and in c/results.json"):
        update_card("ad", f"{a},{b},{c}")
