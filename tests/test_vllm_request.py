"""The vLLM request side (no vLLM needed): prompt layout, the transfer schema, the cache salt, and the pieces the
connector's worker uses without a transformers model (RoPE from the config, packet headers)."""

import os

import pytest
import torch

from hf_kvpacket import PacketAdapter, PacketCache, PacketStore, PacketStoreError, UnsupportedModelError
from hf_kvpacket.packet_file import read_metadata
from hf_kvpacket.prompt import PromptTemplate
from hf_kvpacket.rope import get_rerotator, rerotator_from_config
from hf_kvpacket.vllm import PacketPromptBuilder, PacketTransfer, VLLMConnectorError, kv_transfer_config
from hf_kvpacket.vllm.transfer import PARAMS_KEY, block_slots
from tiny_models import ARCHS, REFUSED, ToyTokenizer, build

DOCS = ["alpha beta gamma delta", "epsilon zeta eta", "theta iota kappa lambda mu"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_rerotator_from_config_reads_the_same_frequencies_as_from_the_model(arch):
    model = build(arch)
    a, b = get_rerotator(model, gate=False).specs, rerotator_from_config(model.config).specs
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.rope_type, x.rotary_dim, x.head_dim) == (y.rope_type, y.rotary_dim, y.head_dim)
        torch.testing.assert_close(x.inv_freq, y.inv_freq, rtol=0, atol=0)


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_rerotator_from_config_refuses_what_the_model_path_refuses(arch):
    with pytest.raises(UnsupportedModelError):
        rerotator_from_config(build(arch).config)


@pytest.fixture
def setup(tmp_path):
    model = build("llama")
    tok = ToyTokenizer()
    adapter = PacketAdapter.for_model(model, 2, 3, seed=0)
    tpl = PromptTemplate(preamble="system you answer", query_template="question {question} answer")
    store = PacketStore(str(tmp_path / "packets"), model, tok, adapter)
    return model, tok, adapter, tpl, store


def test_builder_lays_out_preamble_packets_and_query_as_packet_cache_does(setup):
    model, tok, adapter, tpl, store = setup
    builder = PacketPromptBuilder(store, tpl, placeholder_token_id=0)
    req = builder.build(DOCS, "who is theta")
    cache = PacketCache.from_packets(store.get_many([tpl.document(d) for d in DOCS]), model=model, tokenizer=tok,
                                     preamble=tpl.preamble, adapter=adapter)
    query = tok(tpl.query("who is theta"))["input_ids"]
    assert req.num_packet_tokens == cache.composed_length
    assert req.prompt_token_ids[req.num_packet_tokens:] == query == req.query_token_ids
    pre = tok(tpl.preamble, add_special_tokens=True)["input_ids"]
    expect = list(pre)
    for d in DOCS:
        expect += [0, 0] + tok(tpl.document(d))["input_ids"] + [0, 0, 0]
    assert req.prompt_token_ids[: req.num_packet_tokens] == expect
    t = req.transfer
    assert t.has_preamble and t.lengths[0] == len(pre) and len(t.keys) == 1 + len(DOCS)
    for i, key in enumerate(t.keys):  # every packet is on disk under its key, with the fingerprints the request says
        meta, _ = read_metadata(store.path(key))
        assert meta["adapter_fingerprint"] == t.expected_adapter(i)
        assert meta["model_fingerprint"] == t.model_fingerprint == store.model_fingerprint
        assert int(meta["length"]) == t.lengths[i]
    assert t.expected_adapter(0) == "none" and t.expected_adapter(1) == adapter.fingerprint
    assert req.prompt()["cache_salt"] == req.cache_salt
    body = req.openai_body("m", max_tokens=4)
    assert body["prompt"] == req.prompt_token_ids and body["kv_transfer_params"][PARAMS_KEY]["keys"] == list(t.keys)


def test_transfer_round_trips_and_malformed_params_name_the_problem(setup):
    *_, tpl, store = setup
    t = PacketPromptBuilder(store, tpl).build(DOCS[:2], "who").transfer
    assert PacketTransfer.from_params(t.to_params()) == t
    assert PacketTransfer.from_params(None) is None and PacketTransfer.from_params({"other": 1}) is None
    bad = [({**t.to_params()[PARAMS_KEY], "version": 99}, "schema version"),
           ({**t.to_params()[PARAMS_KEY], "keys": ["../../etc/passwd"] * 3}, "64 hex"),
           ({**t.to_params()[PARAMS_KEY], "lengths": [1]}, "lengths"),
           ({k: v for k, v in t.to_params()[PARAMS_KEY].items() if k != "model_fingerprint"}, "malformed"),
           ("not a dict", "must be an object")]
    for entry, words in bad:
        with pytest.raises(VLLMConnectorError, match=words):
            PacketTransfer.from_params({PARAMS_KEY: entry})


def test_cache_salt_follows_every_packet_and_the_adapter(setup):
    model, tok, adapter, tpl, store = setup
    other = PacketStore(store.root, model, tok, PacketAdapter.for_model(model, 2, 3, seed=1))
    a = PacketPromptBuilder(store, tpl).build(DOCS, "who")
    b = PacketPromptBuilder(other, tpl).build(DOCS, "who")
    c = PacketPromptBuilder(store, tpl).build(DOCS[::-1], "who")
    assert a.prompt_token_ids == b.prompt_token_ids  # same placeholders ...
    assert len({a.cache_salt, b.cache_salt, c.cache_salt}) == 3  # ... never the same prefix-cache entries
    assert a.cache_salt == PacketPromptBuilder(store, tpl).build(DOCS, "another question").cache_salt


def test_builder_needs_a_folder_and_a_query(setup):
    model, tok, adapter, tpl, store = setup
    with pytest.raises(VLLMConnectorError, match="folder"):
        PacketPromptBuilder(PacketStore(None, model, tok, adapter), tpl)
    with pytest.raises(VLLMConnectorError, match="query has no tokens"):
        PacketPromptBuilder(store, PromptTemplate(preamble="p", query_template="{question}")).build(DOCS, "")


def test_kv_transfer_config_and_slots(setup):
    *_, tpl, store = setup
    cfg = PacketPromptBuilder(store, tpl).kv_transfer_config()
    assert cfg["kv_connector"] == "KVPacketConnector" and cfg["kv_load_failure_policy"] == "recompute"
    assert os.path.isabs(cfg["kv_connector_extra_config"]["store"])
    assert cfg["kv_connector_extra_config"]["model_fingerprint"] == store.model_fingerprint
    with pytest.raises(VLLMConnectorError):
        kv_transfer_config("x", "y", on_load_error="ignore")
    assert block_slots([7, 3], 4, 2, 6) == [30, 31, 12, 13]


def test_read_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(PacketStoreError, match="cannot read"):
        read_metadata(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(PacketStoreError, match="bad.safetensors"):
        read_metadata(bad)
