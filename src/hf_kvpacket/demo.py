"""`kvpacket demo`: encode a few bundled documents into a store, answer questions with PacketCache, compare TTFT."""

from __future__ import annotations

import json
import os
import statistics
import time
from importlib import resources
from typing import Any

import torch

from .adapter import PacketAdapter
from .cache import PacketCache
from .packet import encode_preamble
from .prompt import PromptTemplate
from .store import PacketStore

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ADAPTER = os.path.join("adapters", "smollm2-135m-instruct-mixture")


def _full_prefill_first_token(model, ids: list[int]) -> tuple[int, float]:
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits
    return int(logits[0, -1].argmax()), time.perf_counter() - start


def run_demo(model_name: str = DEFAULT_MODEL, adapter_path: str | None = None, store_dir: str | None = None,
             max_new_tokens: int = 24, repeats: int = 3) -> dict[str, Any]:
    from .offline_models import load_model_and_tokenizer

    torch.manual_seed(0)
    data = json.loads(resources.files("hf_kvpacket").joinpath("data/demo_docs.json").read_text())
    print(f"Loading {model_name} ...")
    model, tok = load_model_and_tokenizer(model_name)
    adapter_path = adapter_path or (DEFAULT_ADAPTER if os.path.isdir(DEFAULT_ADAPTER) else None)
    adapter = PacketAdapter.from_pretrained(adapter_path) if adapter_path else None
    print(f"Adapter: {adapter_path or 'none (no-recompute packets; train one with `kvpacket train`)'}")
    store_dir = store_dir or os.path.join(os.environ.get("KVPACKET_CACHE", ".kvpacket_cache"), "demo_packets")
    store = PacketStore(store_dir, model, tok, adapter)
    # Plain packets (no adapter) too, so the adapter's effect is visible next to "no recompute".
    plain_store = PacketStore(store_dir, model, tok, None) if adapter is not None else None
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt=data["system_prompt"])
    docs = [tpl.document(d) for d in data["documents"]]
    preamble = encode_preamble(model, tok(tpl.preamble, add_special_tokens=False)["input_ids"])
    rows = []
    for item in data["questions"]:
        query_ids = tok(tpl.query(item["question"]), add_special_tokens=False)["input_ids"]
        full_ids = list(preamble.token_ids) + [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"]] + query_ids
        packet_times, full_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            packets = store.get_many(docs, progress=False)
            cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=preamble)
            with torch.no_grad():
                model(**cache.inputs_for(query_ids), logits_to_keep=1)
            packet_times.append(time.perf_counter() - start)
            full_times.append(_full_prefill_first_token(model, full_ids)[1])
        cache = PacketCache.from_packets(store.get_many(docs, progress=False), model=model, tokenizer=tok,
                                         preamble=preamble)
        out = model.generate(**cache.inputs_for(query_ids), max_new_tokens=max_new_tokens, do_sample=False)
        answer = tok.decode(out[0, len(query_ids):], skip_special_tokens=True).strip()
        plain_answer = None
        if plain_store is not None:
            plain = PacketCache.from_packets(plain_store.get_many(docs, progress=False), model=model, tokenizer=tok,
                                             preamble=preamble)
            out = model.generate(**plain.inputs_for(query_ids), max_new_tokens=max_new_tokens, do_sample=False)
            plain_answer = tok.decode(out[0, len(query_ids):], skip_special_tokens=True).strip()
        full = model.generate(input_ids=torch.tensor([full_ids]), attention_mask=torch.ones(1, len(full_ids), dtype=torch.long),
                              max_new_tokens=max_new_tokens, do_sample=False)
        full_answer = tok.decode(full[0, len(full_ids):], skip_special_tokens=True).strip()
        t_packet, t_full = statistics.median(packet_times), statistics.median(full_times)
        rows.append({"question": item["question"], "gold": item["answer"], "kvpacket": answer, "full": full_answer,
                     "no_recompute": plain_answer, "ttft_kvpacket_s": t_packet, "ttft_full_s": t_full})
        label = "KV Packet" if adapter is not None else "packets"
        print(f"\nQ: {item['question']}  (gold: {item['answer']})\n  {label:<14}: {answer!r}")
        if plain_answer is not None:
            print(f"  {'no recompute':<14}: {plain_answer!r}")
        print(f"  {'full prefill':<14}: {full_answer!r}\n  {'TTFT':<14}: {t_packet * 1e3:.1f} ms with packets vs "
              f"{t_full * 1e3:.1f} ms full prefill ({t_full / t_packet:.1f}x), context "
              f"{len(full_ids) - len(query_ids)} tokens")
    print(f"\nStore {store_dir}: {store.stats}")
    ratio = statistics.median(r["ttft_full_s"] / r["ttft_kvpacket_s"] for r in rows)
    print(f"Median TTFT speed-up over full prefill: {ratio:.1f}x")
    return {"rows": rows, "store": store.stats.as_dict(), "median_speedup": ratio}
