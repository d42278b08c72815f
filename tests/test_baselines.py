"""Baselines: each equals the full recompute in its degenerate setting; selection, FLOPs and the method matrix."""

import pytest
import torch
from default_baselines import default_baselines
from tiny_models import ToyTokenizer, build, float64_rotary

from hf_kvpacket import PacketAdapter
from hf_kvpacket.baselines import (
    EPIC,
    METHODS,
    BaselineError,
    CacheBlend,
    FlopCounter,
    FullRecompute,
    KVPacket,
    MethodContext,
    ModelDims,
    NoRecompute,
    PromptParts,
    QueryOnly,
    make_method,
    probe_deviation,
    run_selected,
)
from hf_kvpacket.baselines.base import top_fraction
from hf_kvpacket.compat import cache_kwargs, output_cache
from hf_kvpacket.layout import block_forward, wrapped_sequence
from hf_kvpacket.prompt import PromptTemplate

PREAMBLE = [5, 9, 17, 3, 22]
DOCS = [[30 + i for i in range(7)], [60 + (i * 7) % 50 for i in range(11)], [(i * 13) % 120 + 1 for i in range(20)]]
QUERY = [101, 7, 44, 12, 90, 3]
PARTS = PromptParts(PREAMBLE, DOCS, QUERY)


class Tok(ToyTokenizer):
    """ToyTokenizer that can also decode (ids as words)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def make_ctx(arch="llama", dtype=torch.float32, adapter=True):
    model = build(arch, dtype)
    ad = PacketAdapter.for_model(model, 3, 2).to(dtype) if adapter else None
    tpl = PromptTemplate(preamble="system a b c", query_template="question {question} answer")
    return MethodContext(model, Tok(), template=tpl, adapter=ad)


def first_logits(method, ctx, parts=PARTS):
    """Logits of the first generated token, through the method's own (timed) prefill path."""
    method.prepare(ctx, parts)
    with torch.no_grad():
        pre = method.prefill(ctx, parts)
        inputs = {k: v for k, v in pre.inputs.items()}
        return ctx.model(**inputs).logits[0, -1]


@pytest.fixture(scope="module")
def ctx():
    return make_ctx()


# ---------------------------------------------------------------------------------------------- degenerate settings
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cacheblend_full_ratio_equals_full_recompute(arch):
    c = make_ctx(arch)
    ref = first_logits(FullRecompute(), c)
    got = first_logits(CacheBlend(recompute_ratio=1.0), c)
    assert (got - ref).abs().max().item() <= 1e-4


def test_epic_covering_every_token_equals_full_recompute(ctx):
    ref = first_logits(FullRecompute(), ctx)
    got = first_logits(EPIC(num_tokens=max(len(d) for d in DOCS)), ctx)
    assert (got - ref).abs().max().item() <= 1e-4


def test_no_recompute_one_document_no_preamble_equals_full_recompute(ctx):
    parts = PromptParts([], [DOCS[2]], QUERY)
    ref = first_logits(FullRecompute(), ctx, parts)
    got = first_logits(NoRecompute(), ctx, parts)
    assert (got - ref).abs().max().item() <= 1e-4


def test_no_recompute_differs_with_several_documents(ctx):
    """Sanity: the stitching error is real, so the degenerate tests above are not vacuous."""
    ref = first_logits(FullRecompute(), ctx)
    assert (first_logits(NoRecompute(), ctx) - ref).abs().max().item() > 1e-3
    assert (first_logits(EPIC(num_tokens=2), ctx) - ref).abs().max().item() > 1e-3


def test_degenerate_answers_equal_full_recompute_fp64():
    c = make_ctx("llama", torch.float64)
    with float64_rotary(c.model):
        ref = FullRecompute().answer(c, PARTS, max_new_tokens=6)
        for method in (CacheBlend(recompute_ratio=1.0), EPIC(num_tokens=100)):
            got = method.answer(c, PARTS, max_new_tokens=6)
            assert got.answer_text == ref.answer_text, method.label
            assert got.recomputed_tokens == PARTS.num_document_tokens
        single = PromptParts([], [DOCS[1]], QUERY)
        assert NoRecompute().answer(c, single, 6).answer_text == FullRecompute().answer(c, single, 6).answer_text


def test_query_only_ignores_documents(ctx):
    other = PromptParts(PREAMBLE, [[1, 2, 3]], QUERY)
    a = QueryOnly().answer(ctx, PARTS, max_new_tokens=6)
    b = QueryOnly().answer(ctx, other, max_new_tokens=6)
    closed_book = FullRecompute().answer(ctx, PromptParts(PREAMBLE, [], QUERY), max_new_tokens=6)
    assert a.answer_text == b.answer_text == closed_book.answer_text
    assert a.context_tokens == len(PREAMBLE) and a.recomputed_tokens == 0
    ref = first_logits(FullRecompute(), ctx, PromptParts(PREAMBLE, [], QUERY))
    assert (first_logits(QueryOnly(), ctx) - ref).abs().max().item() <= 1e-4


def test_kv_packet_equals_block_diagonal_reference(ctx):
    got = first_logits(KVPacket(), ctx)
    embeds, blocks = wrapped_sequence(ctx.model, PREAMBLE, DOCS, QUERY, ctx.adapter)
    with torch.no_grad():
        ref = block_forward(ctx.model, embeds, blocks).logits[0, -1]
    assert (got - ref).abs().max().item() <= 1e-4


def test_kv_packet_needs_an_adapter():
    c = make_ctx(adapter=False)
    with pytest.raises(BaselineError, match="adapter"):
        KVPacket().answer(c, PARTS, max_new_tokens=2)
    own = PacketAdapter.for_model(c.model, 2, 2)
    assert KVPacket(adapter=own).answer(c, PARTS, max_new_tokens=2).context_tokens == len(PREAMBLE) + sum(
        len(d) + 4 for d in DOCS)


# ---------------------------------------------------------------------------------------------- selective recompute
def full_prefill_cache(model, ids):
    from transformers import DynamicCache

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True, **cache_kwargs(DynamicCache(config=model.config)))
    return output_cache(out)


def test_run_selected_recomputes_exactly_the_selected_slots(ctx):
    """Recomputing all of document 1 (right after the exact preamble) gives the full-prefill KV there; others stay."""
    ctx.ensure_packets(DOCS, None)
    cache = NoRecompute()._compose(ctx, PARTS, None)
    stale = [layer.keys.clone() for layer in cache.layers]
    start = len(PREAMBLE)
    slots = torch.arange(start, start + len(DOCS[0]))
    with torch.no_grad():
        run_selected(ctx, PARTS, cache, slots)
    full = full_prefill_cache(ctx.model, PARTS.context_ids)
    for layer, ref, old in zip(cache.layers, full.layers, stale):
        assert torch.allclose(layer.keys[:, :, : slots[-1] + 1], ref.keys[:, :, : slots[-1] + 1], atol=1e-5)
        assert torch.allclose(layer.values[:, :, : slots[-1] + 1], ref.values[:, :, : slots[-1] + 1], atol=1e-5)
        assert torch.equal(layer.keys[:, :, slots[-1] + 1 :], old[:, :, slots[-1] + 1 :])


def test_cacheblend_probe_measures_value_deviation_of_check_layer(ctx):
    """The probe's deviation equals |V_full - V_stale|^2 on layer 1 (layer 0 is recomputed exactly by the probe)."""
    ctx.ensure_packets(DOCS, None)
    cache = NoRecompute()._compose(ctx, PARTS, None)
    stale_v1 = cache.layers[1].values.clone()
    start = len(PREAMBLE)
    slots = torch.arange(start, start + PARTS.num_document_tokens)
    with torch.no_grad():
        dev = probe_deviation(ctx, PARTS, cache, slots, layer=1)
    full = full_prefill_cache(ctx.model, PARTS.context_ids)
    expected = (full.layers[1].values - stale_v1)[0, :, start:].pow(2).sum(dim=(0, 2))
    assert torch.allclose(dev, expected, rtol=1e-4, atol=1e-6)
    assert dev[: len(DOCS[0])].max() > 0  # stale: the packets never saw the preamble
    # layer 0 now holds the full-prefill KV of every document token
    assert torch.allclose(cache.layers[0].keys, full.layers[0].keys, atol=1e-5)


def test_cacheblend_selects_top_deviation_share(ctx, monkeypatch):
    from hf_kvpacket.baselines import selective as base

    chosen = {}
    original = base.run_selected

    def spy(c, parts, cache, slots):
        chosen["slots"] = slots.clone()
        return original(c, parts, cache, slots)

    monkeypatch.setattr(base, "run_selected", spy)
    ctx.ensure_packets(DOCS, None)
    cache = NoRecompute()._compose(ctx, PARTS, None)
    start = len(PREAMBLE)
    doc_slots = torch.arange(start, start + PARTS.num_document_tokens)
    with torch.no_grad():
        dev = probe_deviation(ctx, PARTS, cache, doc_slots, layer=1)
    result = CacheBlend(recompute_ratio=0.25).answer(ctx, PARTS, max_new_tokens=2)
    k = top_fraction(PARTS.num_document_tokens, 0.25)
    assert result.recomputed_tokens == k == chosen["slots"].numel()
    assert chosen["slots"].tolist() == sorted(doc_slots[dev.topk(k).indices].tolist())


def test_selective_recompute_refuses_sliding_window_models():
    c = make_ctx("mistral_sliding")
    with pytest.raises(BaselineError, match="sliding"):
        EPIC(num_tokens=2).answer(c, PARTS, max_new_tokens=2)


@pytest.mark.parametrize("kwargs", [{"recompute_ratio": 1.5}, {"check_layer": 0}, {"deviation": "norm"}])
def test_cacheblend_rejects_bad_knobs(kwargs):
    with pytest.raises(BaselineError):
        CacheBlend(**kwargs)


def test_epic_rejects_negative_tokens():
    with pytest.raises(BaselineError):
        EPIC(num_tokens=-1)


# ---------------------------------------------------------------------------------------------- FLOPs
def test_flops_formula_known_case():
    dims = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, params_per_layer=1000,
                     lm_head_params=500, qkv_params_per_layer=100)
    c = FlopCounter(dims)
    c.prefill(3, past=10)  # contexts 11, 12, 13; one logits row
    assert c.total == 3 * 2 * 1000 * 2 + 4 * 2 * 4 * 16 * (11 + 12 + 13) + 2 * 500
    c2 = FlopCounter(dims)
    c2.tokens([11, 12, 13])
    c2.logits(1)
    assert c2.total == c.total
    c3 = FlopCounter(dims)
    c3.rerotation(5)
    c3.tokens([7], layers=1)
    c3.projections(2, dims.qkv_params_per_layer)
    assert c3.total == 3 * 2 * 2 * 16 * 5 + (2 * 1000 + 4 * 4 * 16 * 7) + 2 * 100 * 2


def test_model_dims_from_tiny_llama():
    model = build("llama")
    dims = ModelDims.from_model(model)
    h, i, heads, kv, hd = 64, 96, 4, 2, 16
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * i + 2 * h  # q,o + k,v + mlp + norms
    assert (dims.num_layers, dims.num_heads, dims.num_kv_heads, dims.head_dim) == (2, heads, kv, hd)
    assert dims.params_per_layer == per_layer
    assert dims.lm_head_params == 128 * h
    assert dims.qkv_params_per_layer == h * (heads + 2 * kv) * hd


def test_method_flops_are_consistent(ctx):
    dims = ctx.dims
    n_ctx, n_q = len(PARTS.context_ids), len(QUERY)
    full = FullRecompute().answer(ctx, PARTS, 2)
    expected = FlopCounter(dims)
    expected.prefill(n_ctx + n_q)
    assert full.flops == expected.total
    stitched = NoRecompute().answer(ctx, PARTS, 2)
    expected = FlopCounter(dims)
    expected.rerotation(PARTS.num_document_tokens)
    expected.prefill(n_q, past=n_ctx)
    assert stitched.flops == expected.total
    assert QueryOnly().answer(ctx, PARTS, 2).flops < stitched.flops < EPIC(num_tokens=2).answer(ctx, PARTS, 2).flops
    assert EPIC(num_tokens=2).answer(ctx, PARTS, 2).flops < full.flops


# ---------------------------------------------------------------------------------------------- matrix and registry
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("entry", default_baselines, ids=lambda e: e["cls"].name)
def test_every_method_runs(arch, entry):
    c = make_ctx(arch)
    example = {"documents": ["one two three four five", "six seven eight", "nine ten eleven twelve"],
               "question": "which number"}
    for kwargs in entry["kwargs"]:
        method = entry["cls"](**kwargs)
        r = method.answer(c, example, max_new_tokens=4)
        assert isinstance(r.answer_text, str) and 1 <= r.new_tokens <= 4
        assert 0 < r.ttft_s <= r.total_s and r.flops > 0
        assert 0 <= r.recomputed_tokens <= 12


def test_registry_and_specs():
    assert set(METHODS) == {"full_recompute", "no_recompute", "kv_packet", "cacheblend", "epic", "query_only"}
    assert {e["cls"] for e in default_baselines} == set(METHODS.values())
    m = make_method("cacheblend:recompute_ratio=0.3:deviation=key")
    assert (m.recompute_ratio, m.deviation, m.label) == (0.3, "key", "cacheblend(recompute_ratio=0.3,deviation=key)")
    assert make_method("epic").label == "epic" and make_method("epic:num_tokens=8").num_tokens == 8
    for bad in ("nope", "epic:tokens=3", "epic:num_tokens=x", "epic:num_tokens"):
        with pytest.raises(BaselineError):
            make_method(bad)


def test_packets_stay_resident_and_unmodified(ctx):
    KVPacket().answer(ctx, PARTS, 2)
    NoRecompute().answer(ctx, PARTS, 2)
    packets = ctx.lookup_packets(DOCS, ctx.adapter) + ctx.lookup_packets(DOCS, None)
    before = [[t.clone() for t in (*p.keys, *p.values)] for p in packets]
    for method in (EPIC(num_tokens=3), CacheBlend(), CacheBlend(recompute_ratio=1.0), KVPacket()):
        method.answer(ctx, PARTS, 2)
    assert ctx.lookup_packets(DOCS, None)[0] is packets[len(DOCS)]  # resident: not re-encoded
    for p, b in zip(packets, before):
        assert all(torch.equal(x, y) for x, y in zip((*p.keys, *p.values), b))


def test_a_store_of_ones_own_on_disk_serves_the_timed_lookup_with_timed_loads(tmp_path):
    """`use_store` + `timed_loads`: the bench's "from disk" line, the same method over a store that keeps nothing in
    memory; the lookup reads the files, marks the end of the load, and gives the resident store's first logits."""
    from hf_kvpacket import PacketStore

    resident = make_ctx()
    model, adapter = resident.model, resident.adapter
    ref = first_logits(KVPacket(), resident)
    store = PacketStore(tmp_path / "store", model, resident.tokenizer, adapter, max_memory_bytes=0)
    ticks = iter(range(100))
    disk = MethodContext(model, resident.tokenizer, template=resident.template, adapter=adapter, timed_loads=True,
                         clock=lambda: float(next(ticks)))
    assert disk.use_store(store) is store and disk.store_for(adapter) is store
    got = first_logits(KVPacket(), disk)
    assert torch.equal(got, ref) and store.num_in_memory == 0 and store.last_call.disk_hits == len(DOCS)
    assert set(disk.marks) == {"load"}
    cold = MethodContext(model, resident.tokenizer, template=resident.template, adapter=adapter)
    cold.use_store(store)
    with pytest.raises(Exception, match="not resident"):
        KVPacket().prefill(cold, PARTS)  # without timed_loads, a packet that is not in memory is an error
    fresh = MethodContext(model, resident.tokenizer, template=resident.template, adapter=adapter, timed_loads=True)
    fresh.use_store(PacketStore(tmp_path / "empty", model, resident.tokenizer, adapter, max_memory_bytes=0))
    with pytest.raises(Exception, match="encoded a document"):
        KVPacket().prefill(fresh, PARTS)  # encoding in the timed path stays an error
    with pytest.raises(Exception, match="another model"):
        fresh.use_store(PacketStore(None, build("llama"), resident.tokenizer, adapter))


def test_empty_query_is_an_error():
    with pytest.raises(Exception, match="query"):
        PromptParts(PREAMBLE, DOCS, [])


# ---------------------------------------------------------------------------------------------- runner and report
def run_tiny_eval(tmp_path, **overrides):
    from hf_kvpacket.evaluation.runner import EvalConfig, run_evaluation

    model = build("llama")
    settings = {"model": "tiny-llama", "tasks": ("biography",), "num_samples": 2, "adapter": "random",
                "max_new_tokens": 3, "output": str(tmp_path / "run"), "seed": 1}
    settings.update(overrides)
    return run_evaluation(EvalConfig(**settings), model=model, tokenizer=Tok(), progress=False)


def read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_runner_writes_samples_results_tables_and_plots(tmp_path):
    summary = run_tiny_eval(tmp_path)
    out = tmp_path / "run"
    records = read_jsonl(out / "samples.jsonl")
    assert len(records) == 2 * len(METHODS)
    assert {r["method"] for r in records} == set(METHODS)
    for name in ("results.json", "results.md", "f1_by_task.png", "f1_vs_ttft.png", "run_config.json"):
        assert (out / name).is_file(), name
    cell = summary["results"]["biography"]["kv_packet"]
    assert cell["n"] == 2 and 0 <= cell["f1"] <= 1 and 0 <= cell["fidelity"] <= 1 and cell["ttft_s"] > 0
    assert summary["results"]["biography"]["full_recompute"]["fidelity"] == 1.0
    assert summary["meta"]["command"].startswith("kvpacket eval --model tiny-llama --tasks biography")
    table = (out / "results.md").read_text()
    assert "| kv_packet |" in table and "kvpacket eval --model tiny-llama" in table


def test_runner_resumes_and_refuses_to_overwrite(tmp_path):
    from hf_kvpacket.evaluation.runner import EvalRunError

    run_tiny_eval(tmp_path, methods=("full_recompute", "epic"))
    samples = tmp_path / "run" / "samples.jsonl"
    with pytest.raises(EvalRunError, match="--resume"):
        run_tiny_eval(tmp_path, methods=("full_recompute", "epic"))
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # lost one answer, half-written line
    summary = run_tiny_eval(tmp_path, methods=("full_recompute", "epic", "query_only"), resume=True)
    records = read_jsonl_tolerant(samples)
    keys = [(r["task"], r["method"], r["id"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * 3
    assert summary["results"]["biography"]["query_only"]["n"] == 2
    with pytest.raises(EvalRunError, match="max_new_tokens"):
        run_tiny_eval(tmp_path, max_new_tokens=5, resume=True)


def test_resume_refuses_a_retrained_adapter(tmp_path):
    from hf_kvpacket.evaluation.runner import EvalRunError

    first = PacketAdapter.for_model(build("llama"), 2, 2, seed=0)
    first.save_pretrained(tmp_path / "adapter", model_card=False)
    run_tiny_eval(tmp_path, adapter=str(tmp_path / "adapter"), num_samples=1, methods=("kv_packet",))
    run_tiny_eval(tmp_path, adapter=str(tmp_path / "adapter"), num_samples=2, methods=("kv_packet",), resume=True)
    PacketAdapter.for_model(build("llama"), 2, 2, seed=1).save_pretrained(tmp_path / "adapter", model_card=False)
    with pytest.raises(EvalRunError, match="adapter"):
        run_tiny_eval(tmp_path, adapter=str(tmp_path / "adapter"), num_samples=3, methods=("kv_packet",), resume=True)


def test_reuse_from_copies_only_adapter_independent_answers(tmp_path, monkeypatch):
    from hf_kvpacket.baselines import FullRecompute
    from hf_kvpacket.evaluation.runner import EvalRunError

    run_tiny_eval(tmp_path, methods=("full_recompute", "kv_packet"))
    first = {(r["method"], r["id"]): r for r in read_jsonl(tmp_path / "run" / "samples.jsonl")}
    monkeypatch.setattr(FullRecompute, "answer", lambda *a, **k: pytest.fail("a reused answer was recomputed"))
    PacketAdapter.for_model(build("llama"), 2, 2, seed=7).save_pretrained(tmp_path / "new", model_card=False)
    summary = run_tiny_eval(tmp_path, methods=("full_recompute", "kv_packet"), adapter=str(tmp_path / "new"),
                            reuse_from=str(tmp_path / "run"), output=str(tmp_path / "second"))
    records = read_jsonl(tmp_path / "second" / "samples.jsonl")
    assert len(records) == 4 and summary["results"]["biography"]["kv_packet"]["n"] == 2
    for r in records:
        if r["method"] == "full_recompute":
            assert r["reused_from"] == str(tmp_path / "run") and r["answer"] == first[(r["method"], r["id"])]["answer"]
        else:
            assert "reused_from" not in r
    assert "--reuse-from" in summary["meta"]["command"]
    with pytest.raises(EvalRunError, match="max_new_tokens"):
        run_tiny_eval(tmp_path, methods=("full_recompute",), max_new_tokens=5, reuse_from=str(tmp_path / "run"),
                      output=str(tmp_path / "third"))


def test_reuse_and_resume_check_example_content_not_just_ids(tmp_path):
    """An id does not pin an example's documents (SQuAD's distractors once depended on num_samples): answers
    recorded for other content under the same id are recomputed, both on --reuse-from and on --resume."""
    import json

    run_tiny_eval(tmp_path, methods=("full_recompute",))
    src = tmp_path / "run" / "samples.jsonl"
    records = read_jsonl(src)
    assert all(len(r["example_sha"]) == 16 for r in records)
    records[0]["example_sha"] = "0" * 16  # as if its documents had been other ones
    del records[1]["example_sha"]  # an old record without the hash cannot be checked
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    run_tiny_eval(tmp_path, methods=("full_recompute",), reuse_from=str(tmp_path / "run"),
                  output=str(tmp_path / "second"))
    second = read_jsonl(tmp_path / "second" / "samples.jsonl")
    assert len(second) == 2 and not any("reused_from" in r for r in second)
    assert {r["example_sha"] for r in second} == {r["example_sha"] for r in read_jsonl(tmp_path / "second" /
                                                                                        "samples.jsonl")}
    summary = run_tiny_eval(tmp_path, methods=("full_recompute",), resume=True)  # the tampered run, resumed
    again = read_jsonl(src)
    assert len(again) == 4 and summary["results"]["biography"]["full_recompute"]["n"] == 2
    assert [r["example_sha"] for r in again[2:]] == [r["example_sha"] for r in second]


def read_jsonl_tolerant(path):
    from hf_kvpacket.evaluation.report import read_records

    return read_records(path)


def test_kv_packet_without_adapter_is_skipped_or_refused(tmp_path):
    from hf_kvpacket.evaluation.runner import EvalRunError

    summary = run_tiny_eval(tmp_path, adapter=None, num_samples=1)
    assert "kv_packet" not in summary["methods"] and "no_recompute" in summary["methods"]
    with pytest.raises(EvalRunError, match="adapter"):
        run_tiny_eval(tmp_path, adapter=None, methods=("kv_packet",), explicit_methods=True,
                      output=str(tmp_path / "other"))


def test_report_only_and_docs_page(tmp_path):
    from hf_kvpacket.evaluation.report import render_docs, write_report

    run_tiny_eval(tmp_path, num_samples=1, methods=("full_recompute", "no_recompute", "cacheblend:recompute_ratio=0.3"))
    out = tmp_path / "run"
    (out / "results.json").unlink()
    summary = write_report(out)
    assert summary["methods"] == ["full_recompute", "no_recompute", "cacheblend(recompute_ratio=0.3)"]
    page = render_docs(out, tmp_path / "docs" / "results.md")
    text = page.read_text()
    assert "kvpacket eval --model tiny-llama" in text and "![Token F1 per task](img/run-f1_by_task.png)" in text
    assert (tmp_path / "docs" / "img" / "run-f1_vs_ttft.png").is_file()


def test_docs_page_summarises_per_task_adapters(tmp_path):
    from hf_kvpacket.evaluation.report import render_docs

    run_tiny_eval(tmp_path, methods=("full_recompute", "no_recompute", "kv_packet"))
    PacketAdapter.for_model(build("llama"), 2, 2, seed=3).save_pretrained(tmp_path / "bio", model_card=False)
    run_tiny_eval(tmp_path, methods=("full_recompute", "no_recompute", "kv_packet"), adapter=str(tmp_path / "bio"),
                  reuse_from=str(tmp_path / "run"), output=str(tmp_path / "per-task-bio"))
    page = render_docs([tmp_path / "run"], tmp_path / "docs" / "results.md", per_task_dirs=[tmp_path / "per-task-bio"],
                       notes="## Learning curves\n\nvalidation KL ...")
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tiny-llama | biography |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"`{tmp_path / 'bio'}`" and cells[3] == "2" and cells[6] != "—"  # mixture column filled
    assert text.rstrip().endswith("validation KL ...")


def test_aggregate_fidelity_and_dedup():
    from hf_kvpacket.evaluation.report import aggregate, markdown_tables

    base = {"task": "t", "exact_match": 0.0, "ttft_s": 1.0, "flops": 1.0, "recomputed_tokens": 0, "context_tokens": 5}
    records = [
        {**base, "method": "full_recompute", "id": "1", "answer": "red car", "f1": 1.0, "ttft_s": 4.0},
        {**base, "method": "full_recompute", "id": "2", "answer": "blue", "f1": 0.0, "ttft_s": 4.0},
        {**base, "method": "x", "id": "1", "error": "boom"},
        {**base, "method": "x", "id": "1", "answer": "red", "f1": 0.5},
        {**base, "method": "x", "id": "2", "answer": "blue", "f1": 0.0},
    ]
    summary = aggregate(records)
    cell = summary["results"]["t"]["x"]
    assert cell["n"] == 2 and cell["errors"] == 0
    assert cell["fidelity"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert "4.0×" in markdown_tables(summary)


def test_by_context_length_buckets_by_the_reference_prompt():
    from hf_kvpacket.evaluation.report import aggregate, markdown_tables

    def rec(method, i, tokens, answer, f1):
        return {"task": "t", "method": method, "id": str(i), "answer": answer, "f1": f1, "exact_match": 0.0,
                "ttft_s": 1.0, "flops": 1.0, "recomputed_tokens": 0, "context_tokens": tokens}

    records = [rec("full_recompute", 1, 500, "red car", 1.0), rec("full_recompute", 2, 3000, "c", 1.0),
               # the adapter's own count includes its slots (1020 + 16 would cross the edge): the reference decides
               rec("kv_packet", 1, 1036, "red", 0.5), rec("kv_packet", 2, 3016, "d", 0.0),
               {**rec("kv_packet", 3, 10, "x", 0.0), "error": "boom"}]
    by = aggregate(records)["by_context"]["t"]
    assert list(by) == ["<1024", ">=2048"]
    assert by["<1024"]["kv_packet"] == {"f1": 0.5, "fidelity": pytest.approx(2 / 3), "n": 1}
    assert by[">=2048"]["kv_packet"]["fidelity"] == 0.0 and by[">=2048"]["full_recompute"]["fidelity"] == 1.0
    assert "| t | <1024 | 1 | 1.000 (1.000) | 0.500 (0.667) |" in markdown_tables(aggregate(records))


def test_by_document_count_buckets_by_documents_per_example():
    from hf_kvpacket.evaluation.report import aggregate, markdown_tables

    def rec(method, i, docs, answer, f1):
        return {"task": "t", "method": method, "id": str(i), "answer": answer, "f1": f1, "exact_match": 0.0,
                "ttft_s": 1.0, "flops": 1.0, "recomputed_tokens": 0, "context_tokens": 100, "num_documents": docs}

    records = [rec("full_recompute", 1, 2, "a", 1.0), rec("full_recompute", 2, 7, "b", 1.0),
               rec("full_recompute", 3, 12, "c", 0.0), rec("kv_packet", 1, 2, "a", 1.0),
               rec("kv_packet", 2, 7, "x", 0.0), rec("kv_packet", 3, 12, "c", 0.0)]
    summary = aggregate(records)
    by = summary["by_documents"]["t"]
    assert list(by) == ["<4", "6-8", ">=9"]
    assert by["6-8"]["kv_packet"] == {"f1": 0.0, "fidelity": 0.0, "n": 1}
    assert by[">=9"]["kv_packet"] == {"f1": 0.0, "fidelity": 1.0, "n": 1}  # wrong, but the reference's answer
    tables = markdown_tables(summary)
    assert "By number of documents" in tables and "| t | 6-8 | 1 | 1.000 (1.000) | 0.000 (0.000) |" in tables
    # one bucket only (every example the same size): no table
    assert "By number of documents" not in markdown_tables(aggregate(records[:1] + records[3:4]))
    # with no recompute on the same rows, each bucket carries its own share of the gap, paired over its rows
    few = [rec(m, i, 2, "a", f) for i in range(4) for m, f in (("full_recompute", 1.0), ("no_recompute", 0.0),
                                                                ("kv_packet", float(i < 3)))]
    many = [rec(m, i, 7, "a", f) for i in range(4, 8) for m, f in (("full_recompute", 1.0), ("no_recompute", 0.5),
                                                                    ("kv_packet", 0.5 + 0.5 * (i == 4)))]
    summary = aggregate(few + many)
    by = summary["by_documents"]["t"]
    assert by["<4"]["kv_packet"]["gap_won"]["share"] == pytest.approx(0.75)
    assert by["6-8"]["kv_packet"]["gap_won"]["share"] == pytest.approx(0.25)
    assert "gap_won" not in by["<4"]["no_recompute"] and "gap_won" not in by["<4"]["full_recompute"]
    assert "| t | <4 | 4 | 1.000 (1.000) | 0.000 (" in markdown_tables(summary)
    assert "0.750 (1.000; 75%, n too small for an interval)" in markdown_tables(summary)  # 4 rows: no bootstrap


def test_eval_cli_is_registered():
    from hf_kvpacket.cli import build_parser

    args = build_parser().parse_args(["eval", "--tasks", "niah,squad", "--methods", "epic:num_tokens=8,kv_packet",
                                      "--num-samples", "3", "--resume"])
    assert args.tasks == ["niah", "squad"] and args.methods == ["epic:num_tokens=8", "kv_packet"]
    assert args.num_samples == 3 and args.resume and args.func.__module__ == "hf_kvpacket.evaluation.cli"


def test_eval_obtains_every_packet_through_the_packet_store(tmp_path, monkeypatch):
    """What `kvpacket eval` measures is the user's path: text -> packet -> PacketStore -> PacketCache -> generate."""
    from store_spy import spy_on_store_and_cache

    served, composed = spy_on_store_and_cache(monkeypatch)
    run_tiny_eval(tmp_path)
    assert {p.adapter_fingerprint == "none" for p in composed} == {True, False}  # no recompute and KV Packet ran
    assert all(id(p) in served for p in composed), "a document packet bypassed the PacketStore"
